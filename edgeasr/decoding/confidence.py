"""Calibrated confidence: word and utterance confidences that mean what they say.

The raw word confidence (the geometric mean of a word's token posteriors at their emission
frames) is far from a probability: measured 0.65-0.74 on transcripts that were 70-91% wrong. A
small logistic model maps per-word features to P(word is right):

- ln of the raw word confidence (the acoustic evidence),
- 1 / the word's length in characters (short words are more often wrong and look sure),
- whether the first pass (CTC prefix beam) wrote the same word in that segment (a second pass
  that replaces the first pass's word is a strong doubt signal),
- ln of the segment's raw confidence (a bad segment drags its words down),
- the word's log-probability under the Whisper decoder that wrote it (second pass; 0 without
  one): a decoder trained on real speech knows when it is guessing, where a CTC head trained on
  synthesized speech is sure of itself on real audio.

It is fitted on a held-out dev manifest (``fit_calibration``: decode with the features collected,
label each hypothesis word right or wrong by aligning it with the reference, Newton iterations on
the log loss with a little L2) and stored in the model directory as ``calibration.json``; the
decoding core applies it to every final segment. The utterance confidence is then the mean of its
words' calibrated confidences: the expected fraction of its words that are right.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeasr.errors import EdgeAsrError

CALIBRATION_FILE = "calibration.json"
FEATURES = ("ln_word_confidence", "inverse_length", "in_first_pass", "ln_segment_confidence",
            "whisper_word_log_prob", "bias")
#: a word's Whisper log-probability is clamped here: past it, a word is simply unlikely
WHISPER_FLOOR = -20.0


def word_features(result, first_pass_words: set[str] | None,
                  word_scores: tuple[float, ...] = ()) -> list[list[float]]:
    """One feature row per word of ``result`` (a segment's raw result); ``word_scores``: the
    words' Whisper log-probabilities (``Hypothesis.word_scores``), when a decoder wrote them."""
    segment = math.log(max(result.confidence, 1e-6))
    scores = list(word_scores) if len(word_scores) == len(result.words) else [0.0] * len(result.words)
    rows = []
    for word, whisper in zip(result.words, scores):
        agreed = 1.0 if first_pass_words is None or word.word in first_pass_words else 0.0
        rows.append([math.log(max(word.confidence, 1e-6)), 1.0 / max(1, len(word.word)), agreed, segment,
                     max(WHISPER_FLOOR, whisper), 1.0])
    return rows


@dataclass
class Calibrator:
    """P(word right) = sigmoid(weights . features); see the module docstring."""

    weights: list[float]
    fitted_on: dict = field(default_factory=dict)

    def apply(self, result, first_pass_words: set[str] | None, word_scores: tuple[float, ...] = ()) -> None:
        """Replace the words' raw confidences (and the segment's) with calibrated ones, in place."""
        if not result.words:
            return
        x = np.asarray(word_features(result, first_pass_words, word_scores), dtype=np.float64)
        probs = 1.0 / (1.0 + np.exp(-(x @ np.asarray(self.weights))))
        for word, p in zip(result.words, probs):
            word.confidence = round(float(p), 4)
        result.confidence = round(float(probs.mean()), 4)
        for segment in result.segments:
            segment.confidence = result.confidence

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(json.dumps({"kind": "logistic", "features": list(FEATURES), "weights": self.weights,
                                    "fitted_on": self.fitted_on}, indent=1) + "\n")
        return path


class FeatureCollector:
    """Stands in for a calibrator while fitting: records each final word's features, changes
    nothing, so the features are exactly those ``Calibrator.apply`` will see."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    def apply(self, result, first_pass_words: set[str] | None, word_scores: tuple[float, ...] = ()) -> None:
        self.rows += word_features(result, first_pass_words, word_scores)


def load_calibration(directory) -> Calibrator | None:
    """The model directory's calibration.json, or None when it has none."""
    if directory is None:
        return None
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        named = dict(zip(data["features"], (float(w) for w in data["weights"]), strict=True))
        if "bias" not in named or set(named) - set(FEATURES) or not all(math.isfinite(w) for w in named.values()):
            raise ValueError("features or weights do not match this version")
        # a file fitted before a feature existed gives it no weight: it predicts as it did
        weights = [named.get(name, 0.0) for name in FEATURES]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EdgeAsrError(f"{path}: unusable confidence calibration ({error}); delete it or refit it "
                           "with `edgeasr calibrate`") from None
    return Calibrator(weights, data.get("fitted_on", {}))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iterations: int = 50) -> np.ndarray:
    """Weights minimising mean log loss + l2/2 |w|^2 (bias included), by Newton's method."""
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) / len(y) + l2 * w
        hessian = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def word_correctness(reference: str, hypothesis: str) -> list[bool]:
    """For each hypothesis word: whether the alignment with the reference matches it exactly."""
    import jiwer

    hyp_words = hypothesis.split()
    if not hyp_words:
        return []
    if not reference.split():
        return [False] * len(hyp_words)
    right = [False] * len(hyp_words)
    for chunk in jiwer.process_words(reference, hypothesis).alignments[0]:
        if chunk.type == "equal":
            for index in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                right[index] = True
    return right


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """ECE over equal-width bins, and the reliability diagram's bins (count, mean confidence,
    accuracy). ``correct`` may be fractional (an utterance's share of right words)."""
    confidence, correct = np.asarray(confidence, float), np.asarray(correct, float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence >= low) & ((confidence < high) | (high == 1.0))
        count = int(inside.sum())
        if not count:
            table.append({"low": round(low, 2), "high": round(high, 2), "count": 0})
            continue
        mean_conf, accuracy = float(confidence[inside].mean()), float(correct[inside].mean())
        ece += count / len(confidence) * abs(mean_conf - accuracy)
        table.append({"low": round(low, 2), "high": round(high, 2), "count": count,
                      "confidence": round(mean_conf, 4), "accuracy": round(accuracy, 4)})
    return round(ece, 4), table


def decode_for_calibration(recognizer, utterances, progress=None) -> list[dict]:
    """Decode each utterance as users do (the recognizer's own mode and streaming settings) and
    return, per utterance, its final words' features, raw confidences and whether each is right.
    The recognizer's calibrator is swapped for a collector for the duration (``calibrated``
    then gives what a calibrator says of the same words)."""
    from edgeasr.audio.io import load_audio

    saved = recognizer.calibrator
    out = []
    try:
        for index, utterance in enumerate(utterances):
            collector = FeatureCollector()
            recognizer.calibrator = collector
            result = recognizer.transcribe(load_audio(utterance.audio, sample_rate=recognizer.sample_rate))
            right = word_correctness(utterance.text, result.text)
            if len(collector.rows) != len(right):  # words and features must pair up one to one
                raise EdgeAsrError(f"{utterance.audio}: {len(collector.rows)} feature rows for {len(right)} words")
            out.append({"audio": utterance.audio, "features": collector.rows, "right": right,
                        "confidence": [math.exp(r[0]) for r in collector.rows]})
            if progress is not None:
                progress(index + 1)
    finally:
        recognizer.calibrator = saved
    return out


def calibrated(decoded: list[dict], calibrator: Calibrator) -> list[dict]:
    """``decode_for_calibration`` output with each word's confidence as ``calibrator`` gives it."""
    out = []
    for item in decoded:
        x = np.asarray(item["features"], dtype=np.float64).reshape(-1, len(FEATURES))
        conf = 1.0 / (1.0 + np.exp(-(x @ np.asarray(calibrator.weights))))
        out.append({**item, "confidence": [round(float(c), 4) for c in conf]})
    return out


def fit_calibration(decoded: list[dict], source: str) -> Calibrator:
    """A calibrator fitted on ``decode_for_calibration`` output (a dev set, never the test)."""
    rows = [r for item in decoded for r in item["features"]]
    labels = [float(x) for item in decoded for x in item["right"]]
    if len(rows) < 50:
        raise EdgeAsrError(f"{len(rows)} recognized words are too few to fit a calibration (need 50 or more)")
    if len(set(labels)) < 2:
        raise EdgeAsrError("every dev word is right (or every one wrong): nothing to calibrate against")
    weights = fit_logistic(np.asarray(rows, dtype=np.float64), np.asarray(labels))
    return Calibrator([round(float(w), 6) for w in weights],
                      {"manifest": source, "utterances": len(decoded), "words": len(rows),
                       "word_accuracy": round(float(np.mean(labels)), 4)})


def calibration_report(decoded: list[dict], key: str = "confidence") -> dict:
    """ECE and reliability bins, for words and for utterances (mean word confidence against the
    share of the utterance's words that are right)."""
    words_conf = np.asarray([c for item in decoded for c in item[key]], dtype=float)
    words_right = np.asarray([float(x) for item in decoded for x in item["right"]], dtype=float)
    utt = [(float(np.mean(item[key])), float(np.mean(item["right"]))) for item in decoded if item["right"]]
    word_ece, word_bins = expected_calibration_error(words_conf, words_right)
    utt_ece, utt_bins = expected_calibration_error(np.asarray([u[0] for u in utt]), np.asarray([u[1] for u in utt]))
    return {"words": len(words_conf), "word_accuracy": round(float(words_right.mean()), 4) if len(words_right) else None,
            "mean_word_confidence": round(float(words_conf.mean()), 4) if len(words_conf) else None,
            "word_ece": word_ece, "word_bins": word_bins,
            "utterances": len(utt), "utterance_ece": utt_ece, "utterance_bins": utt_bins}
