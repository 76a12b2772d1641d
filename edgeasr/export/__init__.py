"""Export: ONNX graphs of the streaming encoder and decoder, and an ONNX Runtime recognizer."""
