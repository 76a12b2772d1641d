"""The classic TTS engines (espeak-ng, flite, festival, hibari) really speak, and say so when missing."""

from __future__ import annotations

import numpy as np
import pytest

from edgeasr.data.corpus.base import Voice, engine_names, get_engine
from edgeasr.data.corpus.engines import EspeakEngine, FestivalEngine, FliteEngine, HibariEngine
from edgeasr.errors import EngineError

SENTENCE = "The children walked slowly along the quiet river after school."
WORDS = len(SENTENCE.split())
ENGINES = ["espeak", "flite", "festival", "hibari"]


def _active_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds between the first and last 10 ms frame within 40 dB of the loudest."""
    frame = rate // 100
    energy = np.square(samples[: len(samples) // frame * frame]).reshape(-1, frame).mean(axis=1)
    active = np.nonzero(energy > energy.max() * 1e-4)[0]
    return (active[-1] - active[0] + 1) / 100.0


def _median_f0(samples: np.ndarray, rate: int) -> float:
    """Median autocorrelation pitch of the voiced frames (60-400 Hz)."""
    n, hop = int(0.04 * rate), int(0.01 * rate)
    values = []
    loud = 0.1 * np.max(np.abs(samples))
    for start in range(0, len(samples) - n, hop):
        frame = samples[start : start + n] - samples[start : start + n].mean()
        if np.sqrt(np.mean(frame**2)) < 0.3 * loud:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        low, high = rate // 400, rate // 60
        lag = low + int(np.argmax(ac[low:high]))
        if ac[lag] > 0.4 * ac[0]:
            values.append(rate / lag)
    assert values, "no voiced frames found"
    return float(np.median(values))


def test_classic_engines_are_registered():
    assert set(ENGINES) <= set(engine_names())
    for name in ENGINES:
        assert get_engine(name).name == name


@pytest.mark.parametrize("name", ENGINES)
def test_engine_speaks_a_sentence(name):
    engine = get_engine(name)
    engine.check()
    voices = engine.voices()
    assert voices == engine.voices(), "voices() must be stable"
    assert len({v.id for v in voices}) == len(voices), "voice ids must be unique"
    assert all(v.engine == name and v.id.startswith(f"{name}:") for v in voices)
    result = engine.synthesize(SENTENCE, voices[0], seed=1)
    assert result.samples.dtype == np.float32 and result.samples.ndim == 1
    assert np.max(np.abs(result.samples)) > 0.05, "audio is (nearly) silent"
    assert np.max(np.abs(result.samples)) <= 1.0
    seconds = _active_seconds(result.samples, result.sample_rate)
    assert 0.15 * WORDS < seconds < 0.8 * WORDS, f"{seconds:.2f} s of speech for {WORDS} words"


@pytest.mark.parametrize("name", ENGINES)
def test_rate_changes_duration(name):
    engine = get_engine(name)
    # Every festival voice: the HTS voice takes its rate through another mechanism.
    voices = engine.voices() if name == "festival" else engine.voices()[:1]
    for voice in voices:
        slow = engine.synthesize(SENTENCE, voice, rate=0.8, seed=1)
        fast = engine.synthesize(SENTENCE, voice, rate=1.3, seed=1)
        slow_s = _active_seconds(slow.samples, slow.sample_rate)
        fast_s = _active_seconds(fast.samples, fast.sample_rate)
        assert fast_s < 0.85 * slow_s, f"{voice.id}: rate 1.3 gave {fast_s:.2f} s, rate 0.8 {slow_s:.2f} s"


@pytest.mark.parametrize("name, voice_id", [("espeak", "espeak:en-us"), ("flite", "flite:slt"),
                                            ("festival", "festival:kal_diphone")])
def test_pitch_changes_f0(name, voice_id):
    engine = get_engine(name)
    voice = next(v for v in engine.voices() if v.id == voice_id)
    low = engine.synthesize(SENTENCE, voice, pitch=0.8)
    high = engine.synthesize(SENTENCE, voice, pitch=1.2)
    f0_low, f0_high = _median_f0(low.samples, low.sample_rate), _median_f0(high.samples, high.sample_rate)
    assert f0_high > 1.15 * f0_low, f"pitch 1.2 gave {f0_high:.0f} Hz, pitch 0.8 {f0_low:.0f} Hz"


def test_espeak_voices_cover_accents_and_variants():
    voices = EspeakEngine().voices()
    accents = {v.accent for v in voices}
    assert {"us", "gb", "gb-scotland", "gb-rp", "caribbean"} <= accents
    assert {"male", "female"} <= {v.gender for v in voices}
    assert not any("robosoft" in v.id or "whisper" in v.id for v in voices)
    # The variant is the speaker: the same variant in every accent shares one split key.
    f3 = [v for v in voices if v.id.endswith("+f3")]
    assert len(f3) == len(accents) and len({v.params["speaker"] for v in f3}) == 1


def test_same_person_shares_a_speaker_key_across_engines():
    flite = {v.id: v for v in FliteEngine().voices()}
    festival = {v.id: v for v in FestivalEngine().voices()}
    assert "flite:awb_time" not in flite, "limited-domain voice must be left out"
    assert flite["flite:kal"].params["speaker"] == festival["festival:kal_diphone"].params["speaker"]
    assert flite["flite:slt"].params["speaker"] == festival["festival:cmu_us_slt_arctic_hts"].params["speaker"]
    assert festival["festival:cmu_us_slt_arctic_hts"].params.get("fixed_pitch") is True


def test_hibari_is_reproducible_and_its_british_voice_differs():
    engine = HibariEngine()
    us, gb = engine.voices()
    assert us.params["speaker"] == gb.params["speaker"] and us.accent != gb.accent
    text = "I can't find the tomato schedule in the garage."
    first = engine.synthesize(text, us, seed=7)
    again = engine.synthesize(text, us, seed=7)
    british = engine.synthesize(text, gb, seed=7)
    assert first.sample_rate == 24000
    np.testing.assert_array_equal(first.samples, again.samples)
    assert len(british.samples) != len(first.samples) or not np.array_equal(british.samples, first.samples)


@pytest.mark.parametrize(
    "engine, hint",
    [
        (EspeakEngine(binary="/nonexistent/espeak-ng"), "apt-get install espeak-ng"),
        (FliteEngine(binary="/nonexistent/flite"), "apt-get install flite"),
        (FestivalEngine(text2wave="/nonexistent/text2wave"), "apt-get install festival"),
        (HibariEngine(module="hibari_not_installed_here"), "pip install hibari-tts"),
    ],
)
def test_missing_engine_raises_with_install_hint(engine, hint):
    with pytest.raises(EngineError, match=hint):
        engine.check()
    ok, reason = engine.available()
    assert not ok and hint in reason


def test_engine_failure_reports_the_programs_error():
    bogus = Voice(engine="espeak", id="espeak:xx-bogus", params={"spec": "xx-bogus"})
    with pytest.raises(EngineError, match="espeak.*voice does not exist"):
        EspeakEngine().synthesize(SENTENCE, bogus)
    bogus = Voice(engine="festival", id="festival:bogus_voice", params={"name": "bogus_voice"})
    with pytest.raises(EngineError, match="festival: produced no audio.*unbound variable"):
        FestivalEngine().synthesize(SENTENCE, bogus)
