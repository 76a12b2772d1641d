"""Audio decoding, validation and writing: formats, channels, raw PCM and every kind of bad file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_fixtures import peak_frequency, run_cli, sine

from edgeasr.audio import io as audio_io
from edgeasr.audio.io import (
    audio_duration,
    audio_info,
    load_audio,
    read_audio,
    to_mono,
    validate_samples,
    write_wav,
)
from edgeasr.errors import AudioError

# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize(
    "fmt, subtype, ext, tolerance",
    [
        ("WAV", "PCM_16", "wav", 1.0 / 32768),
        ("WAV", "FLOAT", "wav", 0.0),
        ("FLAC", "PCM_16", "flac", 1.0 / 32768),
        ("FLAC", "PCM_24", "flac", 1.0 / 2**23),
    ],
)
def test_lossless_round_trip(tmp_path, fmt, subtype, ext, tolerance):
    x = sine(440, 22050, 0.5, 0.7)
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, 22050, format=fmt, subtype=subtype)
    samples, rate = read_audio(path)
    assert rate == 22050
    assert samples.shape == (len(x), 1) and samples.dtype == np.float32
    assert np.max(np.abs(samples[:, 0] - x)) <= tolerance + 1e-7


@pytest.mark.parametrize("fmt, ext", [("OGG", "ogg"), ("MP3", "mp3")])
def test_lossy_round_trip_keeps_pitch_and_length(tmp_path, fmt, ext):
    x = sine(1000, 16000, 1.0, 0.5)
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, 16000, format=fmt)
    samples, rate = read_audio(path)
    assert rate == 16000 and samples.shape[1] == 1
    # Codecs add priming/padding samples but not tenths of a second.
    assert abs(len(samples) - len(x)) < 0.1 * 16000
    assert abs(peak_frequency(samples[:, 0], rate) - 1000) <= 2
    body = samples[2000:-2000, 0]
    assert abs(np.sqrt(np.mean(body**2)) - 0.5 / np.sqrt(2)) < 0.05


def test_unknown_extension_is_read_by_content(tmp_path):
    path = tmp_path / "recording.dat"
    sf.write(path, sine(500, 16000, 0.2), 16000, format="WAV")
    samples, rate = read_audio(path)
    assert rate == 16000 and len(samples) == 3200


def test_stereo_to_mono_averages_channels(tmp_path):
    left = sine(300, 16000, 0.25, 0.6)
    right = np.full_like(left, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    samples, _ = read_audio(path)
    assert samples.shape == (4000, 2)
    mono = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)
    assert to_mono(mono) is mono  # already mono: untouched
    assert to_mono(samples[:, :1]).shape == (4000,)


def test_load_audio_resamples_to_16k(tmp_path):
    path = tmp_path / "hi.flac"
    sf.write(path, sine(1000, 44100, 1.5), 44100)
    mono = load_audio(path)
    assert mono.dtype == np.float32 and mono.ndim == 1
    assert abs(len(mono) - 24000) <= 1
    assert abs(peak_frequency(mono, 16000) - 1000) <= 1
    assert len(load_audio(path, sample_rate=8000)) in (11999, 12000, 12001)


def test_raw_pcm_mono_and_stereo(tmp_path):
    values = np.array([0, 16384, -16384, 32767, -32768, 1], dtype="<i2")
    path = tmp_path / "a.raw"
    values.tofile(path)
    samples, rate = read_audio(path, raw_sample_rate=8000)
    assert rate == 8000 and samples.shape == (6, 1)
    np.testing.assert_array_equal(samples[:, 0], values / 32768.0)
    stereo, _ = read_audio(path, raw_sample_rate=8000, raw_channels=2)
    assert stereo.shape == (3, 2)
    np.testing.assert_array_equal(stereo[1], [-16384 / 32768.0, 32767 / 32768.0])
    assert audio_duration(path, raw_sample_rate=8000) == pytest.approx(6 / 8000)
    pcm = tmp_path / "b.PCM"  # extension matched case-insensitively
    values.tofile(pcm)
    assert audio_info(pcm, raw_sample_rate=16000).format == "RAW"


def test_raw_without_rate_says_how_to_fix(tmp_path):
    path = tmp_path / "a.pcm"
    np.zeros(100, dtype="<i2").tofile(path)
    with pytest.raises(AudioError, match="--raw-rate") as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_audio_duration_reads_header_only(tmp_path):
    path = tmp_path / "d.wav"
    sf.write(path, np.zeros(12345, dtype=np.float32), 16000)
    assert audio_duration(path) == pytest.approx(12345 / 16000)
    info = audio_info(path)
    assert (info.format, info.subtype, info.channels, info.frames) == ("WAV", "PCM_16", 1, 12345)


def test_write_wav_clips_creates_dirs_and_is_16_bit(tmp_path):
    path = tmp_path / "deep" / "er" / "out.wav"
    write_wav(path, np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32), 16000)
    info = sf.info(path)
    assert (info.samplerate, info.subtype, info.frames) == (16000, "PCM_16", 4)
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(data, [0.0, 0.5, 32767 / 32768, -1.0], atol=1 / 32768)
    assert os.listdir(path.parent) == ["out.wav"]  # no temporary files left behind


def test_write_wav_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "keep.wav"
    write_wav(path, sine(440, 16000, 0.1), 16000)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(audio_io.sf, "write", explode)
    with pytest.raises(KeyboardInterrupt):
        write_wav(path, np.zeros(16000, dtype=np.float32), 16000)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.wav"]


def test_write_wav_refuses_nan(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        write_wav(tmp_path / "x.wav", np.array([0.0, np.nan], dtype=np.float32), 16000)
    assert not (tmp_path / "x.wav").exists()


def test_validate_samples():
    assert validate_samples(np.zeros(3, dtype=np.float64), "buf").dtype == np.float32
    with pytest.raises(AudioError, match="buf: contains no audio samples"):
        validate_samples(np.zeros(0, dtype=np.float32), "buf")
    with pytest.raises(AudioError, match="2 NaN/Inf"):
        validate_samples(np.array([0.0, np.inf, np.nan], dtype=np.float32), "buf")


# --------------------------------------------------------------------------- bad files


def _wav_bytes(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _with_header_rate(data: bytes, rate: int) -> bytes:
    patched = bytearray(data)
    patched[24:28] = struct.pack("<I", rate)
    return bytes(patched)


def _encoded(fmt: str, seconds: float = 1.0) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, sine(700, 16000, seconds), 16000, format=fmt)
    return buffer.getvalue()


def _make_bad(tmp_path: Path, case: str) -> tuple[Path, dict, str]:
    """(path, read_audio kwargs, expected message fragment) for one kind of bad input."""
    good = _wav_bytes(sine(440, 16000, 0.5))
    kwargs: dict = {}
    if case == "missing":
        return tmp_path / "nope.wav", kwargs, "no such file"
    if case == "directory":
        path = tmp_path / "folder.wav"
        path.mkdir()
        return path, kwargs, "directory"
    path = tmp_path / {"raw_odd": "odd.raw", "raw_no_rate": "a.pcm", "raw_bad_rate": "b.raw"}.get(
        case, f"{case}.wav"
    )
    if case == "empty":
        path.write_bytes(b"")
        expect = "empty file"
    elif case == "header_only_declared":
        path.write_bytes(good[:44])
        expect = "truncated"
    elif case == "header_only_zero_data":
        path.write_bytes(_wav_bytes(np.zeros(0, dtype=np.float32)))
        expect = "no audio samples"
    elif case == "cut_mid_data":
        path.write_bytes(good[: len(good) // 2 + 1])
        expect = "truncated"
    elif case == "text":
        path.write_text("this is not audio\n" * 20)
        expect = "not a readable audio file"
    elif case == "nan":
        x = sine(440, 16000, 0.1)
        x[100] = np.nan
        path.write_bytes(_wav_bytes(x, subtype="FLOAT"))
        expect = "NaN/Inf"
    elif case == "inf":
        x = sine(440, 16000, 0.1)
        x[5] = np.inf
        path.write_bytes(_wav_bytes(x, subtype="FLOAT"))
        expect = "NaN/Inf"
    elif case == "rate_too_low":
        path.write_bytes(_with_header_rate(good, 500))
        expect = "unsupported sample rate 500 Hz"
    elif case == "rate_too_high":
        path.write_bytes(_with_header_rate(good, 999_999))
        expect = "unsupported sample rate 999999 Hz"
    elif case == "raw_odd":
        path.write_bytes(b"\x00\x01\x02")
        kwargs = {"raw_sample_rate": 16000}
        expect = "not a whole number"
    elif case == "raw_no_rate":
        path.write_bytes(b"\x00\x01")
        expect = "--raw-rate"
    elif case == "raw_bad_rate":
        path.write_bytes(b"\x00\x01")
        kwargs = {"raw_sample_rate": 400000}
        expect = "unsupported raw sample rate"
    elif case == "fifo":
        os.mkfifo(path)  # reading it would block forever
        expect = "not a regular file"
    elif case == "huge":
        path.write_bytes(_wav_bytes(np.zeros(16000 * 3, dtype=np.float32)))
        kwargs = {"max_duration": 2.0}
        expect = "too long"
    elif case == "flac_truncated":
        path = tmp_path / "cut.flac"
        data = _encoded("FLAC")
        path.write_bytes(data[: len(data) // 2])
        expect = "corrupt"
    elif case == "mp3_truncated":
        path = tmp_path / "cut.mp3"
        data = _encoded("MP3", 2.0)
        path.write_bytes(data[: len(data) // 3])
        expect = "truncated"
    else:  # pragma: no cover - a typo in the case list
        raise AssertionError(case)
    return path, kwargs, expect


BAD_CASES = [
    "missing",
    "directory",
    "empty",
    "header_only_declared",
    "header_only_zero_data",
    "cut_mid_data",
    "text",
    "nan",
    "inf",
    "rate_too_low",
    "rate_too_high",
    "raw_odd",
    "raw_no_rate",
    "raw_bad_rate",
    "fifo",
    "huge",
    "flac_truncated",
    "mp3_truncated",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_audio_error_naming_the_file(tmp_path, case):
    path, kwargs, expect = _make_bad(tmp_path, case)
    with pytest.raises(AudioError) as info:
        load_audio(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expect in message
    assert "\n" not in message


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c != "huge"])
def test_bad_input_through_cli_info_and_features(tmp_path, case, capsys, monkeypatch):
    path, kwargs, expect = _make_bad(tmp_path, case)
    raw = ["--raw-rate", str(kwargs["raw_sample_rate"])] if "raw_sample_rate" in kwargs else []
    good = tmp_path / "good.wav"
    write_wav(good, sine(440, 16000, 0.3), 16000)

    # info goes on past the bad file, reports the good one, and exits 2.
    assert run_cli(["audio", "info", str(path), str(good), *raw], monkeypatch) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("edgeasr: error: ") and str(path) in err
    assert expect in err and "Traceback" not in err
    assert str(good) in out and "16000 Hz" in out

    assert run_cli(["features", str(path), *raw], monkeypatch) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and str(path) in err and "Traceback" not in err

    assert run_cli(["audio", "convert", str(path), str(tmp_path / "o.wav"), *raw], monkeypatch) == 2
    out, err = capsys.readouterr()
    assert err.startswith("edgeasr: error: ") and str(path) in err
    assert not (tmp_path / "o.wav").exists()


def test_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    path.write_bytes(_wav_bytes(sine(440, 16000, 0.1)))
    if os.geteuid() == 0:
        # root reads anything; make the open() inside the module fail as it would for a user.
        real_open = open

        def denying_open(file, *args, **kwargs):
            if Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(audio_io, "open", denying_open, raising=False)
    else:
        path.chmod(0)
    with pytest.raises(AudioError, match="permission denied") as info:
        load_audio(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- CLI happy paths


def test_cli_info_and_convert(tmp_path, capsys, monkeypatch):
    source = tmp_path / "in.flac"
    sf.write(source, np.stack([sine(1000, 44100, 1.0, 0.5)] * 2, axis=1), 44100)
    assert run_cli(["audio", "info", str(source)], monkeypatch) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "FLAC/PCM_16" in out and "44100 Hz" in out and "2 ch" in out and "1.000 s" in out
    assert "peak -6.0 dBFS" in out

    target = tmp_path / "out" / "in16.wav"
    assert run_cli(["audio", "convert", str(source), str(target)], monkeypatch) == 0
    assert "wrote" in capsys.readouterr().out
    info = sf.info(target)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    converted = load_audio(target)
    assert abs(peak_frequency(converted, 16000) - 1000) <= 1

    assert run_cli(["audio", "convert", str(source), str(tmp_path / "x.mp3")], monkeypatch) == 2
    assert ".wav" in capsys.readouterr().err
    assert run_cli(["audio", "convert", str(source), str(target), "--rate", "50"], monkeypatch) == 2
    assert "output sample rate" in capsys.readouterr().err


def test_cli_audio_group_without_action_shows_help(capsys, monkeypatch):
    assert run_cli(["audio"], monkeypatch) == 2
    assert "info" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["audio", "info", "--help"], monkeypatch)
    assert exit_info.value.code == 0
    assert "--raw-rate" in capsys.readouterr().out


def test_mp3_decoder_chatter_does_not_reach_the_terminal(tmp_path, capfd, monkeypatch):
    path, _, _ = _make_bad(tmp_path, "mp3_truncated")
    assert run_cli(["audio", "info", str(path)], monkeypatch) == 2
    out, err = capfd.readouterr()  # file-descriptor level: sees libmpg123's own prints too
    assert err.count("\n") == 1 and err.startswith("edgeasr: error: ")
