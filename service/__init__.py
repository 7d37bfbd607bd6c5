"""cpc-embed service: serves CPC context vectors from ONNX bundles (no torch)."""

__version__ = "0.1.0"
