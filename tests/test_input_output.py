"""What goes in and what comes out: arrays of any common layout and rate, segments, word times,
and the output formats (txt, json, srt, vtt, tsv) of ``edgeasr transcribe``."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import edgeasr
from edgeasr.audio.io import array_samples, load_audio, resample
from edgeasr.cli import main
from edgeasr.decoding.formats import cues, render, to_srt, to_tsv, to_vtt
from edgeasr.decoding.result import Result, Segment, Word
from edgeasr.errors import AudioError, EdgeAsrError
from edgeasr.evaluate.metrics import word_errors

CLIP = Path("samples/kokoro-female.wav")


@pytest.fixture(scope="module")
def default_model():
    return edgeasr.load_model("default")


@pytest.fixture(scope="module")
def clip():
    return load_audio(CLIP, sample_rate=16000)


def test_arrays_are_converted_not_misread():
    x = np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32)
    pcm = np.round(x * 32767).astype(np.int16)
    assert np.allclose(array_samples(pcm, None, 16000), x, atol=1e-4)  # int16 scaled, not 16384.0
    assert np.allclose(array_samples((x * 2**31 * 0.999).astype(np.int32), None, 16000), x * 0.999, atol=1e-4)
    assert np.allclose(array_samples(np.round(x * 127 + 128).astype(np.uint8), None, 16000), x, atol=0.01)
    stereo = np.stack([x, -x + 0.5], axis=1)  # [samples, channels]
    assert np.allclose(array_samples(stereo, None, 16000), stereo.mean(axis=1))
    assert np.allclose(array_samples(stereo.T.copy(), None, 16000), stereo.mean(axis=1))  # [channels, samples]
    assert array_samples(x.astype(np.float64), None, 16000).dtype == np.float32
    tone = np.sin(np.arange(22050) / 22050 * 2 * np.pi * 440).astype(np.float32)
    assert abs(len(array_samples(tone, 22050, 16000)) - 16000) <= 1  # one second either way


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 4), np.float32), "not audio"),
    (np.zeros((100, 40), np.float32), "at most 16 channels"),
    (np.zeros(10, np.complex64), "unsupported sample type"),
    (np.full(10, 20000.0, np.float32), "must lie in [-1, 1]"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    ("not an array".encode(), "expected a numpy array"),
])
def test_bad_arrays_get_one_clear_error(bad, message):
    with pytest.raises(AudioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        array_samples(bad, None, 16000)
    with pytest.raises(AudioError):
        array_samples(np.zeros(100, np.float32), 12.5, 16000)  # not a whole-Hz rate


def test_transcribe_takes_int16_stereo_and_other_rates(default_model, clip):
    expected = default_model.transcribe(clip).text
    assert expected
    pcm = np.round(clip * 32767).astype(np.int16)
    assert default_model.transcribe(pcm).text == expected
    assert default_model.transcribe(np.stack([pcm, pcm], axis=1)).text == expected
    at_44k = resample(clip, 16000, 44100)
    counts = word_errors(expected, default_model.transcribe(at_44k, sample_rate=44100).text)
    assert counts.errors <= 1  # resampled twice, not read as 16 kHz (which gives a slowed-down mess)
    assert default_model.transcribe(str(CLIP)).text == expected


def test_a_stream_resamples_its_chunks_and_keeps_one_rate(default_model, clip):
    at_8k = resample(clip, 16000, 8000)
    whole = default_model.transcribe(at_8k, sample_rate=8000).text
    session = default_model.stream()
    for start in range(0, len(at_8k), 777):  # odd chunk sizes: the resampler's state carries over
        session.accept(np.round(at_8k[start : start + 777] * 32767).astype(np.int16), sample_rate=8000)
    assert session.finish().text == whole
    mixed = default_model.stream()
    mixed.accept(at_8k[:8000], sample_rate=8000)
    with pytest.raises(EdgeAsrError, match="one stream, one rate"):
        mixed.accept(at_8k[8000:16000], sample_rate=16000)
    with pytest.raises(EdgeAsrError, match="8000 Hz"):
        mixed.accept(at_8k[8000:16000])


def test_segments_and_word_times_follow_the_speech(default_model, clip):
    pause = np.zeros(16000 * 2, dtype=np.float32)
    audio = np.concatenate([clip, pause, clip])
    result = default_model.transcribe(audio)
    assert len(result.segments) == 2, result.segments
    first, second = result.segments
    assert first.text and second.text and " ".join([first.text, second.text]) == result.text
    speech_end = len(clip) / 16000
    # the pause belongs to no word: the first segment's last word ends near where its speech does
    assert first.end <= speech_end + 0.3 and second.start >= speech_end + 1.5
    words = result.words
    assert all(a.end <= b.start + 1e-6 for a, b in zip(words, words[1:]))
    assert all(w.start <= w.end for w in words)
    assert result.to_dict()["segments"][0]["words"][0]["word"] == first.words[0].word


def hand_made_result() -> Result:
    words = [Word(f"word{i}", 0.5 * i, 0.5 * i + 0.4, 0.9) for i in range(20)]
    segments = [Segment(0.0, 4.9, " ".join(w.word for w in words[:10]), words[:10], 0.9),
                Segment(3605.0, 3609.9, " ".join(w.word for w in words[10:]),
                        [Word(w.word, w.start + 3600, w.end + 3600, w.confidence) for w in words[10:]], 0.9)]
    return Result(text=" ".join(w.word for w in words), words=words, segments=segments)


def test_subtitle_cues_are_readable_and_timed_by_their_words():
    result = hand_made_result()
    for cue in cues(result):
        assert 1 <= len(cue.lines) <= 2 and all(len(line) <= 42 for line in cue.lines)
        assert cue.end - cue.start <= 7.0
    srt = to_srt(result)
    blocks = srt.strip().split("\n\n")
    assert blocks[0].splitlines()[0] == "1" and blocks[0].splitlines()[1].startswith("00:00:00,000 --> 00:00:")
    assert "01:00:05,000 --> " in srt  # hours, minutes, seconds, milliseconds after a comma
    vtt = to_vtt(result)
    assert vtt.startswith("WEBVTT\n\n") and "01:00:05.000 --> " in vtt
    assert " ".join(" ".join(b.splitlines()[2:]) for b in blocks) == result.text  # every word, once, in order
    tsv = to_tsv(result).splitlines()
    assert tsv[0] == "start\tend\ttext" and tsv[2].startswith("3605000\t3609900\tword10")
    assert render(Result(text=""), "srt") == "" and render(Result(text=""), "vtt") == "WEBVTT\n\n"
    with pytest.raises(EdgeAsrError, match="unknown output format"):
        render(result, "docx")


def test_transcribe_writes_each_format_into_an_output_dir(tmp_path, capsys):
    out = tmp_path / "out"
    for output_format in ("txt", "json", "srt", "vtt", "tsv"):
        assert main(["transcribe", str(CLIP), "-f", output_format, "-o", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"kokoro-female.{ext}" for ext in ("json", "srt", "tsv", "txt", "vtt")]
    record = json.loads((out / "kokoro-female.json").read_text())
    text = (out / "kokoro-female.txt").read_text().strip()
    assert record["audio"] == str(CLIP) and record["text"] == text and record["segments"][0]["text"] == text
    assert "-->" in (out / "kokoro-female.srt").read_text()
    assert capsys.readouterr().out == ""  # the results went to files
    assert main(["transcribe", str(CLIP), str(CLIP), "-f", "srt"]) != 0  # several documents need a directory
    assert "needs --output-dir" in capsys.readouterr().err


def test_transcribe_reads_standard_input(default_model):
    from edgeasr.audio.io import SAMPLE_RATE

    wav = CLIP.read_bytes()
    run = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", "-"], input=wav, capture_output=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr.decode()
    assert run.stdout.decode().strip() == default_model.transcribe(str(CLIP)).text
    samples, _ = sf.read(CLIP, dtype="int16")
    raw = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", "-", "--raw-rate", str(SAMPLE_RATE)],
                         input=samples.tobytes(), capture_output=True, timeout=300)
    assert raw.returncode == 0 and raw.stdout == run.stdout
    empty = subprocess.run([sys.executable, "-m", "edgeasr", "transcribe", "-"], input=b"", capture_output=True,
                           timeout=300)
    assert empty.returncode != 0 and empty.stderr.decode().strip() == "edgeasr: error: -: no audio on standard input"


def test_files_stream_from_disk_in_blocks(default_model, clip, tmp_path, monkeypatch):
    """A file path streams from disk block by block (memory flat in the file's length): the same
    text as the decoded array at 16 kHz; other rates and channels go through the session's
    resampler; a bad sample deep in a file names the file."""
    import edgeasr.audio.io as audio_io

    pause = np.zeros(16000, dtype=np.float32)
    long = np.concatenate([clip, pause, clip, pause, clip])
    path = tmp_path / "long.wav"
    sf.write(path, long, 16000, subtype="PCM_16")
    blocks = []
    real = audio_io.iter_audio_blocks

    def spy(*args, **kwargs):
        rate, it = real(*args, seconds=2.0, **{k: v for k, v in kwargs.items() if k != "seconds"})
        return rate, (blocks.append(len(b)) or b for b in it)

    monkeypatch.setattr("edgeasr.decoding.core.iter_audio_blocks", spy)
    streamed = default_model.transcribe(str(path))
    assert len(blocks) > 3 and max(blocks) <= 32000  # never the whole file at once
    assert streamed.text == default_model.transcribe(load_audio(path)).text
    stereo = tmp_path / "stereo44k.wav"
    sf.write(stereo, np.stack([resample(long, 16000, 44100)] * 2, axis=1), 44100, subtype="PCM_16")
    assert word_errors(streamed.text, default_model.transcribe(str(stereo)).text).errors <= 2
    broken = tmp_path / "nan.wav"
    bad = long.copy()
    bad[len(bad) // 2] = np.nan
    sf.write(broken, bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: .*NaN"):
        default_model.transcribe(str(broken))
