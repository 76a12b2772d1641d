"""WER/CER of a model under every decoding mode from one encoder pass per utterance.

Streaming output equals the masked full-sequence computation at the same chunk size (the tests
prove it), so accuracy at chunk N is measured by running the encoder once per utterance under the
chunk-N mask; every mode then decodes that one output through the decoding core the recognizers
use (``DecodingCore.decode_frames``), so evaluation cannot drift from what a user runs. This is
what the benchmark scripts use; ``edgeasr eval`` decodes the way a user would (streaming).
"""

from __future__ import annotations

import torch

from edgeasr.decoding.modes import MODES as MODE_REGISTRY
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors

#: the modes measured here: all but the Whisper second pass (it re-encodes with full context)
MODES = tuple(name for name, mode in MODE_REGISTRY.items() if mode.second_pass != "whisper")


@torch.no_grad()
def decode_all_modes(packaged, utts, audio, chunk_size: int, beam_size: int = 10, ctc_weight: float = 0.5,
                     **options) -> dict:
    """{mode: {"wer", "cer", "substitutions", "deletions", "insertions", "words"}} over ``utts``.

    ``audio`` holds the utterances' 16 kHz samples in the same order; chunk_size 0 = full context.
    ``options``: further DecodeOptions (lm, lm_weight, hotwords, ...); default: no LM.
    """
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer

    options.setdefault("lm", None)
    model = packaged.model
    modes = [m for m in MODES
             if (MODE_REGISTRY[m].head != "transducer" or getattr(model, "transducer", None) is not None)
             and (MODE_REGISTRY[m].second_pass != "cascade" or getattr(model, "cascade", None) is not None)]
    recognizers = {mode: Recognizer(packaged, DecodeOptions(mode=mode, beam_size=beam_size, ctc_weight=ctc_weight,
                                                            chunk_size=chunk_size, **options))
                   for mode in modes}
    totals = {mode: [ErrorCounts(), ErrorCounts()] for mode in modes}
    first = next(iter(recognizers.values())).first_model  # the model, or options["first_pass"]'s
    for utt, samples in zip(utts, audio):
        feats = packaged.features.compute(samples)
        encoded, _ = first.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]), chunk_size, -1)
        log_probs = first.ctc_log_probs(encoded)[0]
        seconds = len(samples) / packaged.features.sample_rate
        for mode, recognizer in recognizers.items():
            text = recognizer.decode_frames(log_probs, encoded, seconds).text
            totals[mode][0] += word_errors(utt.text, text)
            totals[mode][1] += char_errors(utt.text, text)
    return {
        mode: {"wer": round(w.rate, 2), "cer": round(c.rate, 2), "substitutions": w.substitutions,
               "deletions": w.deletions, "insertions": w.insertions, "words": w.reference_length}
        for mode, (w, c) in totals.items()
    }


def transcribe_in_turns(recognizers: dict, audio: list) -> tuple[dict, dict]:
    """Every utterance through every recognizer, the recognizers taking turns on each one (a busy
    spell of a shared machine then falls on all of them); a warm-up second first, untimed.
    Returns ({name: texts}, {name: seconds per utterance})."""
    import time

    for recognizer in recognizers.values():
        recognizer.transcribe(audio[0][:16000])
    texts = {name: [] for name in recognizers}
    seconds = {name: [] for name in recognizers}
    for samples in audio:
        for name, recognizer in recognizers.items():
            started = time.perf_counter()
            texts[name].append(recognizer.transcribe(samples).text)
            seconds[name].append(time.perf_counter() - started)
    return texts, seconds
