"""Models built from config: encoder block plans, heads and the ASR model."""
