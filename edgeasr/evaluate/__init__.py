"""Scoring and measurement: WER/CER with error breakdowns, RTF."""
