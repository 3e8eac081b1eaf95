"""The model layer: how edged opens ONNX Runtime sessions and checks golden pairs."""
