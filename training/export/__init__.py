"""From a training run to a model bundle: ONNX export, its check, and the int8 copy."""
