"""Quantization: fake-quant QAT, post-training quantization, integer inference, packed weights."""
