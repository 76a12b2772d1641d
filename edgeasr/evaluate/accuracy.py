"""WER/CER of a model under every decoding mode from one encoder pass per utterance.

Streaming output equals the masked full-sequence computation at the same chunk size (the tests
prove it), so accuracy at chunk N is measured by running the encoder once per utterance under the
chunk-N mask; greedy, prefix beam and attention rescoring then all read that one output. This is
what the benchmark scripts use; ``edgeasr eval`` decodes the way a user would (streaming).
"""

from __future__ import annotations

import torch

from edgeasr.decoding.ctc import PrefixBeamSearch, ctc_greedy
from edgeasr.decoding.rescoring import attention_rescore
from edgeasr.evaluate.metrics import ErrorCounts, char_errors, word_errors

MODES = ("ctc_greedy", "ctc_prefix_beam", "attention_rescoring")


@torch.no_grad()
def decode_all_modes(packaged, utts, audio, chunk_size: int, beam_size: int = 10, ctc_weight: float = 0.5) -> dict:
    """{mode: {"wer", "cer", "substitutions", "deletions", "insertions", "words"}} over ``utts``.

    ``audio`` holds the utterances' 16 kHz samples in the same order; chunk_size 0 = full context.
    """
    model, tokenizer = packaged.model, packaged.tokenizer
    totals = {mode: [ErrorCounts(), ErrorCounts()] for mode in MODES}
    for utt, samples in zip(utts, audio):
        feats = packaged.features.compute(samples)
        encoded, _ = model.encode(feats.unsqueeze(0), torch.tensor([feats.size(0)]), chunk_size, -1)
        log_probs = model.ctc_log_probs(encoded)[0]
        search = PrefixBeamSearch(beam_size=beam_size)
        search.step(log_probs)
        nbest = search.nbest()
        texts = {
            "ctc_greedy": tokenizer.decode(ctc_greedy(log_probs).tokens),
            "ctc_prefix_beam": tokenizer.decode(nbest[0].tokens) if nbest else "",
        }
        if model.decoder is not None and nbest:
            ranked = attention_rescore(model, nbest, encoded, ctc_weight)
            texts["attention_rescoring"] = tokenizer.decode(ranked[0][0].tokens)
        else:
            texts["attention_rescoring"] = texts["ctc_prefix_beam"]
        for mode in MODES:
            totals[mode][0] += word_errors(utt.text, texts[mode])
            totals[mode][1] += char_errors(utt.text, texts[mode])
    return {
        mode: {"wer": round(w.rate, 2), "cer": round(c.rate, 2), "substitutions": w.substitutions,
               "deletions": w.deletions, "insertions": w.insertions, "words": w.reference_length}
        for mode, (w, c) in totals.items()
    }
