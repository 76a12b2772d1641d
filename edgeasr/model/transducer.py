"""Transducer head (RNN-T): a stateless prediction network, a joiner and the loss.

Why a transducer: most of the seed papers (4-bit native QAT, S8BQAT, compute-amortized
Transformer-Transducer) measure RNN-T, and streaming transducers emit words as they are heard,
without a rescoring pass. torchaudio and k2 cannot be installed here, so the loss is our own.

**Loss.** ``rnnt_loss`` is the negative log of the sum over every alignment of the targets to the
encoder frames in the T x (U+1) lattice (Graves 2012): at node (t, u) a path either emits blank and
moves to frame t+1, or emits target u+1 and stays at frame t; it ends with a blank from (T-1, U).
The joiner's logits are reduced to the two log-probabilities each node needs (blank, and the next
target) before the recursion, so the recursion holds [B, U+1] per frame, never [B, T, U+1, V].
The forward variable of frame t is a linear recurrence along u,

    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1]),

solved for all u at once with a cumulative sum and a log-cumulative-sum-exp (the same closed form
as the CTC prefix scorer's), so the Python loop runs over frames only and autograd gives the
gradient. Tested against a brute-force sum over all alignments and with gradcheck.

**Prediction network.** Stateless, as icefall's: the embedding of the last ``context`` tokens
(blank stands for "no token yet") through a grouped 1-D convolution. Its state in streaming is just
the last ``context`` tokens, so carrying it across chunks is trivial and it exports as one graph.

**Search.** ``edgeasr.decoding.transducer_search`` (greedy and modified beam search) reads the
head through ``TorchTransducerRunner`` here, or the exported graphs through ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

NEG = -1e30


def rnnt_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    logit_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    blank: int = 0,
    reduction: str = "mean",
) -> torch.Tensor:
    """RNN-T loss of joiner logits [B, T, U+1, V] for targets [B, U] (padded with anything).

    ``logit_lengths`` [B] frames and ``target_lengths`` [B] tokens per utterance; reduction
    "none" ([B]), "sum" or "mean" (over the batch).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, T, U+1, V], got shape {tuple(logits.shape)}")
    batch, frames, nodes, _ = logits.shape
    if targets.size(1) + 1 != nodes:
        raise ValueError(f"logits have {nodes} target positions, targets need {targets.size(1) + 1}")
    if bool((logit_lengths < 1).any()) or bool((logit_lengths > frames).any()):
        raise ValueError("every utterance needs 1..T frames")
    if bool((target_lengths > targets.size(1)).any()) or bool((target_lengths < 0).any()):
        raise ValueError("target lengths must lie within 0..U")
    # float32 at least (half-precision joiners), float64 kept (gradient checks)
    log_probs = (logits if logits.dtype == torch.float64 else logits.float()).log_softmax(dim=-1)
    blank_lp = log_probs[..., blank]  # [B, T, U+1]
    # Positions past an utterance's own targets hold padding (any value): never on its paths.
    padding = torch.arange(nodes - 1, device=logits.device)[None, :] >= target_lengths[:, None]  # [B, U]
    index = targets.long().masked_fill(padding, 0)[:, None, :, None].expand(batch, frames, nodes - 1, 1)
    emit_lp = log_probs[:, :, :-1].gather(-1, index).squeeze(-1)  # [B, T, U]: emit target u+1 at (t, u)
    emit_lp = emit_lp.masked_fill(padding[:, None, :], NEG)
    zeros = torch.zeros(batch, 1, dtype=emit_lp.dtype, device=logits.device)
    alpha = None
    finals = torch.zeros(batch, dtype=emit_lp.dtype, device=logits.device)
    for t in range(frames):
        emit = emit_lp[:, t]  # [B, U]
        cumulative = torch.cat([zeros, emit.cumsum(dim=1)], dim=1)  # [B, U+1]: sum of emit[t, 0..u-1]
        if alpha is None:
            entry = torch.full_like(cumulative, NEG)
            entry[:, 0] = 0.0  # every path starts at (0, 0)
        else:
            entry = alpha + blank_lp[:, t - 1]  # arrive from frame t-1 by a blank
        # alpha[t, u] = logsumexp_k (entry[k] + sum emit[t, k..u-1]) = C[u] + logcumsumexp(entry - C)[u]
        alpha = cumulative + torch.logcumsumexp(entry - cumulative, dim=1)
        alpha = alpha.clamp(min=NEG)
        ends = logit_lengths == t + 1
        if bool(ends.any()):
            last = alpha.gather(1, target_lengths[:, None].long()).squeeze(1)
            last_blank = blank_lp[:, t].gather(1, target_lengths[:, None].long()).squeeze(1)
            finals = torch.where(ends, last + last_blank, finals)
    losses = -finals
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', not {reduction!r}")


class StatelessPredictor(nn.Module):
    """Prediction network without recurrence: embeddings of the last ``context`` tokens mixed by a
    grouped convolution (icefall's stateless decoder). Token ``blank`` pads the context."""

    def __init__(self, vocab_size: int, dim: int, context: int = 2, blank: int = 0) -> None:
        super().__init__()
        if context < 1:
            raise ValueError("the prediction network needs a context of at least 1 token")
        self.context, self.blank = context, blank
        self.embed = nn.Embedding(vocab_size, dim)
        self.mix = nn.Conv1d(dim, dim, kernel_size=context, groups=dim // 4 if dim % 4 == 0 else 1, bias=False)
        self.dim = dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, U] -> predictor output [B, U+1, D]: position u has seen tokens < u (padding
        past a target's end may hold anything in range; it only reaches positions never used)."""
        start = torch.full((tokens.size(0), self.context), self.blank, dtype=torch.long, device=tokens.device)
        padded = torch.cat([start, tokens.clamp(0, self.embed.num_embeddings - 1).long()], dim=1)  # [B, context + U]
        x = self.embed(padded).transpose(1, 2)  # [B, D, context + U]
        return torch.relu(self.mix(x)).transpose(1, 2)  # [B, U + 1, D]

    def step(self, context_tokens: torch.Tensor) -> torch.Tensor:
        """The last ``context`` tokens [B, context] -> output [B, D] for the next position."""
        x = self.embed(context_tokens.long()).transpose(1, 2)
        return torch.relu(self.mix(x))[:, :, -1]


class Joiner(nn.Module):
    """logits = out(tanh(enc_proj(encoder frame) + pred_proj(predictor output)))."""

    def __init__(self, encoder_dim: int, predictor_dim: int, joint_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joint_dim)
        self.predictor_proj = nn.Linear(predictor_dim, joint_dim, bias=False)
        self.out = nn.Linear(joint_dim, vocab_size)

    def forward(self, encoded: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """encoded [..., De] and predicted [..., Dp], broadcastable -> logits [..., V]."""
        return self.out(torch.tanh(self.encoder_proj(encoded) + self.predictor_proj(predicted)))


@dataclass
class TransducerConfig:
    vocab_size: int
    encoder_dim: int
    predictor_dim: int = 256
    joint_dim: int = 256
    context: int = 2
    blank: int = 0


class TransducerHead(nn.Module):
    """A transducer over any encoder's output: predictor + joiner, its loss and its search."""

    def __init__(self, config: TransducerConfig) -> None:
        super().__init__()
        self.config = config
        self.predictor = StatelessPredictor(config.vocab_size, config.predictor_dim, config.context, config.blank)
        self.joiner = Joiner(config.encoder_dim, config.predictor_dim, config.joint_dim, config.vocab_size)

    def loss(self, encoded: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """encoded [B, T, De], targets [B, U] -> the RNN-T loss (the full [B, T, U+1, V] joint)."""
        predicted = self.predictor(targets)  # [B, U+1, Dp]
        logits = self.joiner(encoded[:, :, None, :], predicted[:, None, :, :])
        return rnnt_loss(logits, targets, lengths, target_lengths, self.config.blank, reduction)

    def runner(self) -> "TorchTransducerRunner":
        return TorchTransducerRunner(self)


class TorchTransducerRunner:
    """The head behind the searches' runner interface (``edgeasr.decoding.transducer_search``):
    numpy in and out, torch inside, no gradients."""

    def __init__(self, head: TransducerHead) -> None:
        self.head = head
        self.context = head.config.context
        self.blank = head.config.blank

    @torch.no_grad()
    def project(self, frames) -> np.ndarray:
        return self.head.joiner.encoder_proj(torch.as_tensor(frames, dtype=torch.float32)).numpy()

    @torch.no_grad()
    def predict(self, contexts) -> np.ndarray:
        predicted = self.head.predictor.step(torch.from_numpy(contexts))
        return self.head.joiner.predictor_proj(predicted).numpy()

    @torch.no_grad()
    def join(self, frame, predicted) -> np.ndarray:
        joint = torch.tanh(torch.from_numpy(frame)[None, :] + torch.from_numpy(predicted))
        return self.head.joiner.out(joint).log_softmax(-1).numpy()
