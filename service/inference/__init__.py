"""Inference: loaded bundles, the ONNX runner, dynamic batching, the encode pipeline, pooling.

Nothing here imports the web stack; the offline jobs use it as the API does.
"""
