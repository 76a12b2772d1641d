"""Search over model outputs: CTC greedy and prefix beam search, attention rescoring, streaming."""
