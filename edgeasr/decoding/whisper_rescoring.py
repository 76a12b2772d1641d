"""The second pass of a Whisper-based model: full-context re-encoding plus Whisper's own decoder.

The first pass streams: a chunk-causal Whisper encoder and the CTC head give partial results chunk
by chunk. At the end of each segment (an endpoint, or the end of the stream) this pass re-encodes
the segment's features with full context (same weights, no chunk mask: U2's two-pass idea with
pretrained weights) and then decodes it again, in one of two ways (``search``):

``joint`` (default): a beam search in which Whisper's decoder writes and the full-context CTC head
scores every prefix (edgeasr.decoding.joint_whisper), so the text is Whisper's wording kept on
the audio by CTC. ``rescore``: pick among fixed candidates:

- the CTC prefix-beam n-best over the full-context encoding, and the streaming pass's n-best;
- Whisper's decoder writing freely (greedy) over the same encoding. Fed an encoding shorter than
  the 30 s it was trained on, it may not stop, so its length is capped from the CTC hypothesis
  and it is only ever one candidate among others.

Each candidate is scored with ``ctc_weight * log P_ctc(text) + (1 - ctc_weight) * log P_whisper(text)``
(CTC: the exact forward score of the text under the full-context CTC head; Whisper: teacher-forced
over the normalized text plus end-of-text), plus ``length_bonus`` per character. A hallucinated or
looping decoder output has a poor CTC score and loses; a misspelled CTC hypothesis has a poor
Whisper score and loses. The winner's token times come from a CTC forced alignment.
"""

from __future__ import annotations

import math

import numpy as np

from edgeasr.decoding.ctc import Hypothesis, PrefixBeamSearch
from edgeasr.text.normalize import normalize_text
from edgeasr.text.tokenizer import Tokenizer
from edgeasr.text.whisper_tokenizer import WhisperTokenizer


def ctc_scores(log_probs, candidates: list[list[int]], blank: int = 0):
    """log P(candidate | audio) under CTC for each token sequence; log_probs [T, V] (torch)."""
    import torch

    count = len(candidates)
    lengths = torch.tensor([len(c) for c in candidates], dtype=torch.long)
    targets = torch.zeros(count, max(1, int(lengths.max())), dtype=torch.long)
    for i, cand in enumerate(candidates):
        if cand:
            targets[i, : len(cand)] = torch.tensor(cand)
    frames = log_probs.size(0)
    batch = log_probs.float().unsqueeze(1).expand(frames, count, log_probs.size(1))
    loss = torch.nn.functional.ctc_loss(batch, targets, torch.full((count,), frames, dtype=torch.long), lengths,
                                        blank=blank, reduction="none", zero_infinity=False)
    return -loss


def ctc_align(log_probs: np.ndarray, tokens: list[int], blank: int = 0) -> tuple[list[int], list[float]]:
    """Viterbi forced alignment: the frame of each token's first emission, and its posterior.

    Returns empty lists when the tokens cannot fit in the frames (more emissions than frames).
    """
    log_probs = np.asarray(log_probs, dtype=np.float32)
    frames = log_probs.shape[0]
    if not tokens or frames == 0:
        return [], []
    states = np.full(2 * len(tokens) + 1, blank, dtype=np.int64)
    states[1::2] = tokens
    count = states.size
    # A token state may be entered from two back when the token differs from the one before it.
    skip = np.zeros(count, dtype=bool)
    skip[3::2] = states[3::2] != states[1:-2:2]
    score = np.full(count, -np.inf, dtype=np.float64)
    score[0] = log_probs[0, states[0]]
    score[1] = log_probs[0, states[1]]
    back = np.zeros((frames, count), dtype=np.int8)  # 0 stay, 1 from previous, 2 from two back
    for t in range(1, frames):
        stay = score
        prev = np.concatenate([[-np.inf], score[:-1]])
        two = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        stacked = np.stack([stay, prev, two])
        choice = stacked.argmax(axis=0)
        score = stacked[choice, np.arange(count)] + log_probs[t, states]
        back[t] = choice
    end = count - 1 if score[count - 1] >= score[count - 2] else count - 2
    if not np.isfinite(score[end]):
        return [], []
    path = np.empty(frames, dtype=np.int64)
    state = end
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    times, probs = [], []
    previous_state = -1
    for t, state in enumerate(path):
        if state % 2 == 1 and state != previous_state:
            times.append(t)
            probs.append(float(np.exp(log_probs[t, states[state]])))
        previous_state = state
    return times, probs


class TorchWhisperBackend:
    """The second pass's model on torch: full-context re-encoding and the decoder's steps.

    ``writer``: another Whisper model (e.g. Whisper base, imported) whose encoder and decoder
    write the finals, while ``model``'s full-context CTC head still scores every prefix: a larger
    Whisper as the second pass needs no CTC head of its own, so no training."""

    def __init__(self, model, int8_logits: bool = True, writer=None) -> None:
        from edgeasr.model.whisper import TorchDecoderSteps

        self.model = model
        self.writer = model if writer is None else writer
        if self.writer.whisper_decoder is None:
            raise ValueError("this model has no Whisper decoder")
        self.blank = model.blank_id
        if int8_logits:
            self.writer.whisper_decoder.use_int8()
        self.steps = TorchDecoderSteps(self.writer.whisper_decoder)

    def encode(self, feats, speech_frames: int | None = None):
        """Normalized features [T, F] -> (encoded [1, T', D], CTC log-probs [T', V] numpy, this
        model's encoder frames of the segment alone [T', D] numpy), full context.
        ``speech_frames``: the segment's own feature frames when ``feats`` is a padded window (or
        a separate writer reads it): the CTC head then reads the segment alone, as it was trained,
        and the decoder the window. The segment's own frames are what a transducer head reads."""
        import torch

        with torch.no_grad():
            encoded, _ = self.writer.encoder(feats.unsqueeze(0), torch.tensor([feats.size(0)]), 0, -1)
            padded = speech_frames is not None and speech_frames < feats.size(0)
            own_encoded = encoded
            if self.writer is not self.model or padded:
                own = feats[:speech_frames] if padded else feats
                own_encoded, _ = self.model.encoder(own.unsqueeze(0), torch.tensor([own.size(0)]), 0, -1)
            log_probs = self.model.ctc_log_probs(own_encoded)[0].numpy()
            return encoded, log_probs, own_encoded[0].float().numpy()


def _word_scores(units: list[int], unit_att: tuple, space_id: int) -> list[float]:
    """Each word's Whisper log-probability: the sum of its letters' shares (``_Beam.unit_att``)."""
    scores: list[float] = []
    open_word = False
    for unit, share in zip(units, unit_att):
        if unit == space_id:
            open_word = False
            continue
        if not open_word:
            scores.append(0.0)
            open_word = True
        scores[-1] += share
    return scores


class WhisperSecondPass:
    """Rescores one segment; shared by the streaming session and offline transcription, over a
    backend (``TorchWhisperBackend``, or ONNX Runtime's in ``edgeasr.export.runtime``) that
    re-encodes a segment and runs the decoder's steps."""

    def __init__(self, backend, tokenizer: Tokenizer, whisper_tokenizer: WhisperTokenizer, prompt: list[int],
                 ctc_weight: float = 0.5, length_bonus: float = 0.0, beam_size: int = 10,
                 search: str = "joint", joint_beam: int = 3, window_frames: int = 0,
                 silence_below_max: float = 2.0, pad: str = "floor", transducer=None,
                 transducer_weight: float = 1.0) -> None:
        if search not in ("joint", "rescore"):
            raise ValueError(f"second-pass search must be 'joint' or 'rescore', not {search!r}")
        if search == "rescore" and getattr(backend, "model", None) is None:
            raise ValueError("the 'rescore' second pass runs with the torch backend; use 'joint'")
        self.backend = backend
        self.blank = backend.blank
        self.tokenizer = tokenizer
        self.whisper_tokenizer = whisper_tokenizer
        self.prompt = list(prompt)
        self.ctc_weight = ctc_weight
        self.length_bonus = length_bonus
        self.beam_size = beam_size
        self.search = search
        self.joint_beam = joint_beam
        #: feature frames the segment is padded to with silence before re-encoding (0: none)
        self.window_frames = int(window_frames)
        #: where silence sits in the features: this far below the segment's largest value
        #: (Whisper's log-mel floors 8 decades below the maximum, scaled by 1/4: 2.0)
        self.silence_below_max = float(silence_below_max)
        #: "floor": the window is digital silence, as in Whisper's training; "quietest": each mel
        #: bin at the segment's own quietest value, the recording's background continued
        if pad not in ("floor", "quietest"):
            raise ValueError(f"second-pass pad must be 'floor' or 'quietest', not {pad!r}")
        self.pad = pad
        #: a transducer runner (edgeasr.decoding.transducer_search): the joint search's prefix
        #: scores then come from the transducer over the segment's frames, mixed with the CTC
        #: head's as ``transducer_weight`` says (1: the transducer alone)
        if transducer is not None and search != "joint":
            raise ValueError("a transducer second pass runs the joint search")
        if not 0.0 <= transducer_weight <= 1.0:
            raise ValueError("the transducer's weight in the second pass lies between 0 and 1")
        self.transducer = transducer
        self.transducer_weight = float(transducer_weight)
        #: hypotheses kept (and force-aligned for their times) in a result's n-best
        self.nbest = 5
        #: our units for each Whisper token (~50k), built with the recognizer (once per process)
        #: so the first segment's latency does not include it
        self._spelling = None
        if search == "joint":
            from edgeasr.decoding.joint_whisper import spell_whisper_tokens

            self._spelling = spell_whisper_tokens(whisper_tokenizer, tokenizer)
        from edgeasr.decoding.fusion import piece_texts

        self._unit_texts = piece_texts(tokenizer)

    def _joint_max_tokens(self, log_probs: np.ndarray) -> int:
        """A cap on Whisper tokens from the CTC best path: twice its words, plus room."""
        from edgeasr.decoding.ctc import ctc_greedy

        words = len(self.tokenizer.decode(ctc_greedy(log_probs, self.blank).tokens).split())
        return int(min(200, 10 + 2 * words))

    def _prefix_scorer(self, log_probs: np.ndarray, frames):
        """The joint search's first-pass scores: the CTC head's (None: the search's own), or the
        transducer's over the segment's frames, alone or mixed with CTC's."""
        if self.transducer is None:
            return None
        from edgeasr.decoding.joint_whisper import CTCPrefixScorer, MixedPrefixScorer, TransducerPrefixScorer

        transducer = TransducerPrefixScorer(self.transducer, frames)
        if self.transducer_weight >= 1.0:
            return transducer
        return MixedPrefixScorer([(CTCPrefixScorer(log_probs, self.blank), 1.0 - self.transducer_weight),
                                  (transducer, self.transducer_weight)])

    def _joint(self, encoded, log_probs: np.ndarray, scorer=None, frames=None) -> list[tuple[Hypothesis, float]]:
        from edgeasr.decoding.joint_whisper import joint_beam_search
        from edgeasr.text.tokenizer import SPACE

        space_id = self.tokenizer.piece_to_id(SPACE)
        found = joint_beam_search(self.backend.steps, encoded, log_probs, self.prompt, self._spelling,
                                  space_id, beam_size=self.joint_beam, candidates_per_beam=5,
                                  ctc_weight=self.ctc_weight,
                                  max_tokens=self._joint_max_tokens(log_probs), blank=self.blank,
                                  length_bonus=self.length_bonus, text_scorer=scorer,
                                  unit_texts=self._unit_texts, prefix_scorer=self._prefix_scorer(log_probs, frames))
        candidates, seen = [], set()
        for _, units, score, unit_att in found:  # best first; the same text may end several beams
            text = self.tokenizer.decode(units)
            if text not in seen and math.isfinite(score):
                seen.add(text)
                # canonical spelling (spaces collapsed); the joint score stands for both scores
                candidates.append((self.tokenizer.encode(text), score, score,
                                   _word_scores(units, unit_att, space_id)))
        return self._with_times(log_probs, candidates)

    def _with_times(self, log_probs: np.ndarray, candidates: list[tuple]) -> list[tuple[Hypothesis, float]]:
        """(units, CTC score, total[, per-word Whisper log-probs]) best first -> the n-best, the
        best with token times.

        Only the winner's times are ever shown (the n-best lists texts and scores), so only it is
        force-aligned; a candidate whose units cannot fit the frames is passed over.
        """
        ranked: list[tuple[Hypothesis, float]] = []
        for units, ctc, total, *word_scores in candidates:
            if len(ranked) >= self.nbest:
                break
            times: tuple = ()
            probs: tuple = ()
            if not ranked:
                aligned_times, aligned_probs = ctc_align(log_probs, units, self.blank)
                if len(aligned_times) != len(units):
                    continue
                times, probs = tuple(aligned_times), tuple(aligned_probs)
            ranked.append((Hypothesis(tuple(units), ctc, times, probs,
                                      word_scores=tuple(word_scores[0]) if word_scores else ()), total))
        return ranked

    def _max_tokens(self, texts: list[str]) -> int:
        longest = max((len(self.whisper_tokenizer.encode(t)) for t in texts if t), default=0)
        return int(min(200, 8 + 1.5 * longest))

    def rescore(self, feats, first_pass: list[Hypothesis], scorer=None
                ) -> tuple[list[tuple[Hypothesis, float]], np.ndarray]:
        """feats [T, F] (the segment's model input) -> ranked hypotheses and the full-context log-probs.

        ``scorer`` (edgeasr.decoding.fusion: LM, hotwords) is fused into the joint search."""
        # the encoder itself, full context
        encoded, log_probs, frames = self._encode(feats)
        if self.search == "joint" and encoded.shape[1] > 0:
            ranked = self._joint(encoded, log_probs, scorer, frames)
            if ranked:
                return ranked, log_probs
        return self._rescore_candidates(encoded, log_probs, first_pass, scorer), log_probs

    def _encode(self, feats):
        """Full-context encoding of the segment: alone, or as Whisper was trained, at the start
        of a window filled with silence (``window_frames``).

        Whisper saw every utterance padded to 30 s with digital silence, whose log-mel sits at
        the floor, 8 decades below the window's loudest value. Its decoder learnt to stop where
        speech gives way to that silence; over an unpadded segment it loops or drifts, and only
        the CTC term keeps it on the audio (benchmarks/second_pass_window.py measures the
        difference). The decoder reads the whole window; the CTC head reads the segment
        alone (one more encoder pass, over the segment only), as it was trained: over the
        window's encoding its posteriors spread into the silence, and the forced alignment put
        the last word's end there.
        """
        frames = int(feats.shape[0])
        if self.window_frames <= frames or frames == 0:
            return self.backend.encode(feats, speech_frames=frames)
        values = np.asarray(feats)
        if self.pad == "quietest":
            fill = values.min(axis=0)
        else:
            fill = np.full(values.shape[1], values.max() - self.silence_below_max, dtype=values.dtype)
        padded = np.concatenate([values, np.broadcast_to(fill, (self.window_frames - frames, values.shape[1]))])
        if not isinstance(feats, np.ndarray):
            import torch

            padded = torch.from_numpy(padded)
        return self.backend.encode(padded, speech_frames=frames)

    def _rescore_candidates(self, encoded, log_probs: np.ndarray, first_pass: list[Hypothesis], scorer
                            ) -> list[tuple[Hypothesis, float]]:
        """Pick among the full-context CTC n-best, the first pass's and one free Whisper decode
        (torch: teacher-forced scores of whole candidates)."""
        import torch

        with torch.no_grad():
            return self._rescore_torch(encoded, log_probs, first_pass, scorer)

    def _rescore_torch(self, encoded, log_probs, first_pass, scorer) -> list[tuple[Hypothesis, float]]:
        import torch

        model = self.backend.model
        search = PrefixBeamSearch(beam_size=self.beam_size)
        search.step(log_probs)
        texts: list[str] = []
        for hyp in [*search.nbest(), *first_pass]:
            text = self.tokenizer.decode(hyp.tokens)
            if text not in texts:
                texts.append(text)
        if encoded.size(1) > 0:
            ids = model.whisper_decoder.greedy(encoded, self.prompt, self._max_tokens(texts))
            text = normalize_text(self.whisper_tokenizer.decode(ids))
            if text not in texts:
                texts.append(text)
        texts = [t for t in texts if t] or texts
        if not texts or encoded.size(1) == 0:
            return []
        units = [self.tokenizer.encode(t) for t in texts]
        ctc = ctc_scores(torch.from_numpy(log_probs), units, self.blank)
        att = model.whisper_decoder.sequence_log_probs(self.prompt, [self.whisper_tokenizer.encode(t) for t in texts],
                                                       encoded)
        chars = torch.tensor([len(u) for u in units], dtype=torch.float32)
        from edgeasr.decoding.fusion import text_score

        fused = torch.tensor([text_score(scorer, t) for t in texts], dtype=torch.float32)
        total = self.ctc_weight * ctc + (1 - self.ctc_weight) * att.float() + self.length_bonus * chars + fused
        order = [i for i in torch.argsort(total, descending=True).tolist() if torch.isfinite(total[i])]
        candidates = [(units[i], float(ctc[i]), float(total[i])) for i in order]
        return self._with_times(log_probs, candidates)
