"""cpc-embed training: CPC models in torch, the InfoNCE loss, and export to ONNX bundles."""
