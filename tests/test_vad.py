"""The energy VAD: what it calls speech, and a session that skips silence without losing words."""

import numpy as np
import pytest

import edgeasr
from edgeasr.audio.io import load_audio
from edgeasr.audio.vad import EnergyVad, VadRules
from edgeasr.cli import main
from edgeasr.errors import EdgeAsrError
from tests.audio_fixtures import speech_like

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
CLIP = ROOT / "samples" / "kokoro-female.wav"  # "they submitted their charges at the end of each month"
RATE = 16000
BLOCK = 10240  # the default model's block: 32 frames of 20 ms


def noise(seconds: float, db: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (db / 20) * rng.standard_normal(int(seconds * RATE))).astype(np.float32)


def blocks(x: np.ndarray):
    return [x[i : i + BLOCK] for i in range(0, len(x) - BLOCK + 1, BLOCK)]


def test_noise_digital_silence_and_speech_at_any_level():
    vad = EnergyVad(RATE)
    assert not any(vad.is_speech(b) for b in blocks(noise(3, -50)))  # steady noise: the floor finds it
    assert not EnergyVad(RATE).is_speech(np.zeros(BLOCK, dtype=np.float32))
    for gain in (1.0, 0.01):  # a loud and a very quiet recording, each over its own noise floor
        vad = EnergyVad(RATE)
        quiet = noise(2, -50 + 20 * np.log10(gain), seed=1)
        x = np.concatenate([quiet, gain * speech_like(RATE, 2.0) + quiet[: 2 * RATE]])
        decisions = [vad.is_speech(b) for b in blocks(x)]
        assert not any(decisions[:2]) and all(decisions[4:6]), decisions


def test_the_floor_follows_a_louder_room_but_not_into_speech():
    vad = EnergyVad(RATE)
    for b in blocks(noise(2, -60)):
        vad.is_speech(b)
    louder = [vad.is_speech(b) for b in blocks(noise(8, -45, seed=2))]
    assert louder[0] and not any(louder[-4:])  # a jump first sounds like speech, then is the room
    assert vad.is_speech(0.3 * speech_like(RATE, 0.64, seed=3))


def test_rules_are_checked():
    with pytest.raises(ValueError):
        VadRules(margin_db=0)


@pytest.fixture(scope="module")
def recognizers():
    return {vad: edgeasr.load_model("default", mode="whisper_rescoring", vad=vad) for vad in (False, True)}


def _stream(recognizer, x):
    session = recognizer.stream()
    for i in range(0, len(x), 4000):
        session.accept(x[i : i + 4000])
    return session.finish(), session


def test_a_session_skips_pauses_and_keeps_the_words_and_their_times(recognizers):
    clip = load_audio(CLIP)
    x = np.concatenate([noise(2, -55), clip, noise(6, -55, seed=1), clip, noise(0.5, -55, seed=2)])
    plain, _ = _stream(recognizers[False], x)
    skipping, session = _stream(recognizers[True], x)
    assert skipping.text == plain.text and plain.text.count("charges") == 2
    assert [w.start for w in skipping.words] == pytest.approx([w.start for w in plain.words], abs=0.05)
    # of the 8.5 s of pauses, all but the endpointer's 0.8 s after speech and 2 blocks of pre-roll
    # before each onset never reached the encoder
    assert session.skipped_seconds >= 3.0
    assert session.samples_seen == len(x)  # stream time kept: skipped audio counts
    assert [round(s.start) for s in skipping.segments] == [2, 12]


@pytest.mark.parametrize("onset", [0.3, 0.55, 0.62])
def test_a_word_starting_at_the_end_of_a_silent_block_is_decoded_from_its_start(recognizers, onset):
    """Pre-roll: the block before the first voiced one is decoded too."""
    clip = load_audio(CLIP)
    start = 3 * 0.64 + onset
    x = np.concatenate([noise(start, -55), clip, noise(1.0, -55, seed=1)])
    plain, _ = _stream(recognizers[False], x)
    skipping, session = _stream(recognizers[True], x)
    assert skipping.text == plain.text and skipping.text.startswith("they")
    # the decoded stretch begins before the speech does, however little of it the block held
    assert session.finals[0][0] <= start
    assert skipping.words[0].start == pytest.approx(plain.words[0].start, abs=0.05)
    assert session.skipped_seconds >= 0.64


def test_vad_from_the_cli(tmp_path, capsys):
    from edgeasr.audio.io import write_wav

    path = tmp_path / "pauses.wav"
    write_wav(path, np.concatenate([noise(3, -55), load_audio(CLIP), noise(3, -55, seed=1)]), RATE)
    assert main(["transcribe", str(path), "--vad"]) == 0
    assert "charges" in capsys.readouterr().out


def test_unknown_option_still_refused():
    with pytest.raises(EdgeAsrError):
        edgeasr.load_model("default", vda=True)
