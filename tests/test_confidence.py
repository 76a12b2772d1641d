"""Calibrated confidence: the logistic fit, the calibration error, word labels, and the model
directory's calibration.json being applied to every final result."""

import json
import shutil

import numpy as np
import pytest

import edgeasr
from edgeasr.decoding.confidence import (
    CALIBRATION_FILE,
    FEATURES,
    Calibrator,
    calibrated,
    calibration_report,
    decode_for_calibration,
    expected_calibration_error,
    fit_calibration,
    fit_logistic,
    load_calibration,
    word_correctness,
)
from edgeasr.data.manifest import Utterance
from edgeasr.errors import EdgeAsrError
from edgeasr.model.package import DEFAULT_MODEL_DIR


def test_the_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=20000), rng.normal(size=20000), np.ones(20000)])
    truth = np.array([2.0, -1.0, 0.5])
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x @ truth)))).astype(float)
    assert np.allclose(fit_logistic(x, y, l2=0.0), truth, atol=0.1)


def test_calibration_error_and_its_bins():
    conf = np.array([0.95] * 10 + [0.15] * 10)
    right = np.array([1] * 9 + [0] + [0] * 8 + [1] * 2, dtype=float)
    ece, bins = expected_calibration_error(conf, right)
    assert ece == pytest.approx(0.5 * abs(0.95 - 0.9) + 0.5 * abs(0.15 - 0.2))
    assert sum(b["count"] for b in bins) == 20 and len(bins) == 10
    assert expected_calibration_error(np.full(4, 0.5), np.array([1, 0, 1, 0.0]))[0] == 0.0
    overconfident, _ = expected_calibration_error(np.full(10, 0.9), np.zeros(10))
    assert overconfident == pytest.approx(0.9)


def test_word_labels_follow_the_alignment():
    assert word_correctness("the cat sat on the mat", "the cat sad on mat") == [True, True, False, True, True]
    assert word_correctness("a b", "x a y b z") == [False, True, False, True, False]
    assert word_correctness("", "hello") == [False] and word_correctness("hello", "") == []


def test_a_file_fitted_before_a_feature_existed_predicts_as_it_did(tmp_path):
    """calibration.json files name their features: one fitted without the Whisper word score
    (edgeasr before it) loads with weight 0 for it, the others in place."""
    old = ["ln_word_confidence", "inverse_length", "in_first_pass", "ln_segment_confidence", "bias"]
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"kind": "logistic", "features": old,
                                                         "weights": [1.0, 2.0, 3.0, 4.0, 5.0]}))
    weights = dict(zip(FEATURES, load_calibration(tmp_path).weights))
    assert weights == {**dict(zip(old, [1.0, 2.0, 3.0, 4.0, 5.0])), "whisper_word_log_prob": 0.0}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"kind": "logistic", "features": old[:-1],
                                                         "weights": [1.0, 2.0, 3.0, 4.0]}))
    with pytest.raises(EdgeAsrError, match="unusable"):  # no bias: not a calibration of ours
        load_calibration(tmp_path)


def test_whisper_word_scores_sum_each_words_letter_shares():
    from edgeasr.decoding.whisper_rescoring import _word_scores

    space = 1
    # " the" + " ca" + "t" + " sat": shares per letter, 0 for spaces
    units, shares = [5, 6, 7, 1, 8, 9, 10, 1, 11, 12, 13], [-1, -1, -1, 0, -2, -2, -3, 0, -0.5, -0.5, -0.5]
    assert _word_scores(units, shares, space) == pytest.approx([-3.0, -7.0, -1.5])
    assert _word_scores([], [], space) == []


def test_a_bad_calibration_file_is_one_clear_error(tmp_path):
    assert load_calibration(tmp_path) is None
    (tmp_path / CALIBRATION_FILE).write_text('{"kind": "logistic", "features": ["x"], "weights": [1]}')
    with pytest.raises(EdgeAsrError, match="unusable confidence calibration"):
        load_calibration(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_text("{not json")
    with pytest.raises(EdgeAsrError, match=str(tmp_path)):
        load_calibration(tmp_path)


@pytest.fixture(scope="module")
def model_copy(tmp_path_factory):
    """The default model without a calibration (copied: the fit writes into the copy)."""
    out = tmp_path_factory.mktemp("model") / "default"
    shutil.copytree(DEFAULT_MODEL_DIR, out, ignore=shutil.ignore_patterns(CALIBRATION_FILE))
    return out


def test_fitting_and_applying_a_calibration_on_real_decodes(model_copy):
    from pathlib import Path

    clips = sorted(Path("samples").glob("*.wav"))
    # the true references, and references with every word spelt backwards: both labels occur
    texts = [c.with_suffix(".txt").read_text().strip() for c in clips]
    utterances = [Utterance(str(c), t, 1.0) for c, t in zip(clips, texts)]
    utterances += [Utterance(str(c), " ".join(w[::-1] + "x" for w in t.split()), 1.0) for c, t in zip(clips, texts)]
    recognizer = edgeasr.load_model(str(model_copy))
    assert recognizer.calibrator is None
    decoded = decode_for_calibration(recognizer, utterances * 2)
    assert all(len(d["features"]) == len(d["right"]) and len(d["features"][0]) == len(FEATURES) for d in decoded)
    # every word the Whisper second pass wrote carries its log-probability under that decoder
    whisper = FEATURES.index("whisper_word_log_prob")
    assert all(-20.0 <= row[whisper] < 0 for d in decoded for row in d["features"])
    calibrator = fit_calibration(decoded, "samples")
    raw, fitted = calibration_report(decoded), calibration_report(calibrated(decoded, calibrator))
    assert fitted["word_ece"] <= raw["word_ece"]  # on its own fitting data it cannot be worse
    calibrator.save(model_copy)
    record = json.loads((model_copy / CALIBRATION_FILE).read_text())
    assert record["features"] == list(FEATURES) and record["fitted_on"]["words"] == fitted["words"]
    reloaded = edgeasr.load_model(str(model_copy))
    assert isinstance(reloaded.calibrator, Calibrator)
    result = reloaded.transcribe(str(clips[0]))
    x = np.asarray(decoded[0]["features"])
    expected = 1 / (1 + np.exp(-(x @ np.asarray(calibrator.weights))))
    assert [w.confidence for w in result.words] == pytest.approx(expected.tolist(), abs=1e-4)
    assert result.confidence == pytest.approx(float(expected.mean()), abs=1e-3)
    with pytest.raises(EdgeAsrError, match="too few"):
        fit_calibration(decoded[:1], "one")
