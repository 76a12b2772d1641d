"""Attention rescoring (U2's second pass): score CTC n-best lists with the attention decoder.

score = attention_logprob + ctc_weight * ctc_logprob, where the attention log-probability is
teacher-forced over the hypothesis plus <eos>, averaged with the right-to-left decoder's by
``reverse_weight`` when the model has one. All hypotheses of an utterance are scored in one batch.
"""

from __future__ import annotations

import torch

from edgeasr.decoding.ctc import Hypothesis
from edgeasr.model.asr import ASRModel


def _decoder_scores(model: ASRModel, decoder, hyps: list[Hypothesis], encoded: torch.Tensor, reverse: bool) -> torch.Tensor:
    count = len(hyps)
    lengths = torch.tensor([len(h.tokens) for h in hyps], dtype=torch.long)
    width = max(1, int(lengths.max()))
    tokens = torch.full((count, width), -1, dtype=torch.long)
    for i, hyp in enumerate(hyps):
        if hyp.tokens:
            tokens[i, : len(hyp.tokens)] = torch.tensor(hyp.tokens)
    inputs, targets = model.decoder_io(tokens, lengths, reverse=reverse)
    memory = encoded.expand(count, -1, -1)
    memory_lengths = torch.full((count,), encoded.size(1), dtype=torch.long)
    log_probs = torch.log_softmax(decoder(inputs, lengths + 1, memory, memory_lengths), dim=-1)
    picked = log_probs.gather(2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets < 0, 0.0).sum(dim=1)


@torch.no_grad()
def attention_rescore(
    model: ASRModel,
    hyps: list[Hypothesis],
    encoded: torch.Tensor,
    ctc_weight: float = 0.5,
    reverse_weight: float = 0.0,
) -> list[tuple[Hypothesis, float]]:
    """encoded [1, T, D] -> hypotheses with combined scores, best first."""
    if not hyps:
        return []
    if model.decoder is None:
        raise ValueError("this model has no attention decoder; use ctc_prefix_beam decoding")
    scores = _decoder_scores(model, model.decoder, hyps, encoded, reverse=False)
    if model.reverse_decoder is not None and reverse_weight > 0:
        reverse = _decoder_scores(model, model.reverse_decoder, hyps, encoded, reverse=True)
        scores = (1 - reverse_weight) * scores + reverse_weight * reverse
    # The fused score (LM, hotwords) the first pass gave each hypothesis counts here too.
    combined = [(hyp, float(att) + ctc_weight * hyp.score + hyp.fused_score) for hyp, att in zip(hyps, scores)]
    return sorted(combined, key=lambda item: item[1], reverse=True)
