"""Whisper log-mel: == faster-whisper (utterance floor), streaming == batch whatever the chunking,
batches == utterances alone, flat memory on endless streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from audio_fixtures import speech_like
from faster_whisper.feature_extractor import FeatureExtractor

from edgeasr.audio.io import load_audio
from edgeasr.audio.whisper_features import TorchWhisperMel, compute_whisper_mel
from edgeasr.audio.whisper_mel import (
    StreamingWhisperMel,
    WhisperMelOptions,
    num_frames,
    whisper_mel_filters,
)
from edgeasr.errors import DataError

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "samples").glob("*.wav"))
# Measured on the sample clips: max |ours - faster-whisper| is 2.8e-6 (faster-whisper works in
# float32/complex64, we in float64; the features are ~[-1.5, 1.5]).
ORACLE_TOLERANCE = 1e-5
# compute() runs the torch path in float64 and rounds to float32; streaming does the same maths
# in numpy float64 (measured: identical on the clips).
STREAM_TOLERANCE = 1e-5
# The torch path in float32 (training) vs float64: rounding near the floor of quiet frames
# (measured <= 9e-6 on the clips).
FLOAT32_TOLERANCE = 5e-5
RUNNING = WhisperMelOptions()
UTTERANCE = WhisperMelOptions(floor="utterance")


def clip(path: Path) -> np.ndarray:
    info = sf.info(str(path))
    if info.samplerate == 16000 and info.channels == 1:
        samples, _ = sf.read(str(path), dtype="float32")
        return samples
    return load_audio(str(path), sample_rate=16000)


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    assert SAMPLES, "samples/*.wav missing"
    return {path.name: clip(path) for path in SAMPLES}


def maxdiff(a, b) -> float:
    """Largest absolute difference of two equally shaped arrays (0 for empty ones)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0


def stream(samples: np.ndarray, chunks, options: WhisperMelOptions = RUNNING) -> np.ndarray:
    """Feed ``samples`` in chunks of the sizes ``chunks`` yields; all frames, [T, F]."""
    extractor = StreamingWhisperMel(options)
    pieces, start = [], 0
    sizes = iter(chunks)
    while start < samples.size:
        size = next(sizes)
        pieces.append(extractor.accept(samples[start : start + size]))
        start += size
    pieces.append(extractor.finish())
    assert all(p.dtype == np.float32 and p.shape[1:] == (options.dim,) for p in pieces)
    out = np.concatenate(pieces)
    assert extractor.frames_emitted == out.shape[0]
    return out


def naive(samples: np.ndarray, floor: str) -> np.ndarray:
    """Straight-line reference on faster-whisper's filters: pad, frame, FFT, floor."""
    x = samples.astype(np.float64)
    mode = "reflect" if x.size > 200 else "constant"
    padded = np.pad(x, 200, mode=mode)
    count = x.size // 160
    frames = np.array([padded[i * 160 : i * 160 + 400] for i in range(count)]).reshape(count, 400)
    power = np.abs(np.fft.rfft(frames * np.hanning(401)[:-1], axis=-1)) ** 2
    filters = FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    log_mel = np.log10(np.maximum(power @ filters.T, 1e-10))
    if count == 0:
        return log_mel.astype(np.float32)
    ceiling = log_mel.max(1)
    if floor == "running":
        ceiling = np.maximum.accumulate(ceiling)
    else:
        ceiling = np.full(count, ceiling.max())
    return ((np.maximum(log_mel, ceiling[:, None] - 8.0) + 4.0) / 4.0).astype(np.float32)


# --- the oracle ------------------------------------------------------------------------------


def test_filters_are_slaney(clips):
    ours = whisper_mel_filters()
    assert ours.shape == (201, 80) and ours.dtype == np.float32
    np.testing.assert_allclose(ours.T, FeatureExtractor().mel_filters, rtol=1e-6, atol=1e-9)


def test_utterance_floor_matches_faster_whisper(clips):
    extractor = FeatureExtractor()
    for name, samples in clips.items():
        # padding=0: faster-whisper appends ``padding`` zeros before the STFT (160 by default,
        # 30 s inside WhisperModel.transcribe), which would change the last frames and the
        # maximum; without it its frames are exactly the N // 160 frames of the audio.
        reference = extractor(samples, padding=0).T
        ours = UTTERANCE.compute(samples).numpy()
        assert ours.shape == reference.shape == (samples.size // 160, 80), name
        assert maxdiff(ours, reference) < ORACLE_TOLERANCE, name
        streamed = stream(samples, iter(lambda: 1600, None), UTTERANCE)
        assert maxdiff(streamed, ours) < STREAM_TOLERANCE, name


def test_running_floor_matches_naive_reference(clips):
    for samples in [*clips.values(), speech_like(seconds=1.3)]:
        ours = RUNNING.compute(samples).numpy()
        assert maxdiff(ours, naive(samples, "running")) < ORACLE_TOLERANCE


def test_running_floor_never_above_utterance_floor(clips):
    for samples in clips.values():
        running = RUNNING.compute(samples).numpy()
        utterance = UTTERANCE.compute(samples).numpy()
        # A lower floor gives values <= the utterance floor's, and the same ones from the frame
        # holding the utterance maximum on (where the running maximum reaches it).
        assert (running <= utterance + 1e-7).all()
        loudest = int(np.argmax(utterance.max(axis=1)))
        np.testing.assert_array_equal(running[loudest:], utterance[loudest:])
        # The clips start with near-silence, so the floors do differ before the loudest frame.
        assert (running[:loudest] < utterance[:loudest] - 1e-3).any()


# --- streaming == batch ------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 7, 160, 161, 1000, "random"])
def test_streaming_equals_batch_any_chunking(clips, chunk):
    samples = clips[SAMPLES[0].name]
    if chunk in (1, 7):
        samples = samples[:32000]  # per-call overhead: keep these fast
    batch = RUNNING.compute(samples).numpy()
    if chunk == "random":
        rng = np.random.default_rng(0)
        sizes = iter(lambda: int(rng.integers(0, 3000)), None)  # 0-sample chunks included
    else:
        sizes = iter(lambda: chunk, None)
    streamed = stream(samples, sizes)
    assert streamed.shape == batch.shape == (samples.size // 160, 80)
    assert maxdiff(streamed, batch) < STREAM_TOLERANCE


@pytest.mark.parametrize("length", [0, 1, 150, 159, 160, 200, 201, 320, 360, 399, 400, 561])
def test_short_inputs(length):
    samples = speech_like(seconds=0.1, seed=length)[:length]
    batch = RUNNING.compute(samples).numpy()
    assert batch.shape == (length // 160, 80) == (num_frames(length, RUNNING), RUNNING.dim)
    # Below 201 samples the reflection is impossible; both paths zero-pad instead.
    assert maxdiff(batch, naive(samples, "running")) < ORACLE_TOLERANCE
    for sizes in (iter(lambda: 1, None), iter(lambda: max(length, 1), None)):
        streamed = stream(samples, sizes)
        assert streamed.shape == batch.shape
        assert maxdiff(streamed, batch) < STREAM_TOLERANCE


def test_frames_come_out_as_soon_as_complete():
    extractor = StreamingWhisperMel()
    samples = speech_like(seconds=0.2)
    assert extractor.accept(samples[:200]).shape[0] == 0  # frame 0 mirrors sample 200
    assert extractor.accept(samples[200:201]).shape[0] == 1
    assert extractor.accept(samples[201:359]).shape[0] == 0  # frame 1 needs samples up to 359
    assert extractor.accept(samples[359:360]).shape[0] == 1
    assert extractor.frames_emitted == 2
    assert extractor.accept(samples[360:3200]).shape[0] == (3200 - 200) // 160 + 1 - 2
    before = extractor.frames_emitted
    assert extractor.finish().shape[0] == 3200 // 160 - before == 1  # the end's reflection
    assert extractor.frames_emitted == 20
    assert extractor.finish().shape[0] == 0  # idempotent
    with pytest.raises(RuntimeError, match="reset"):
        extractor.accept(samples)
    extractor.reset()
    assert extractor.frames_emitted == 0
    again = np.concatenate([extractor.accept(samples[:3200]), extractor.finish()])
    assert maxdiff(again, RUNNING.compute(samples[:3200]).numpy()) < STREAM_TOLERANCE


def test_utterance_floor_streams_at_finish_only():
    samples = speech_like(seconds=0.5)
    extractor = UTTERANCE.stream()
    assert extractor.accept(samples).shape == (0, 80)
    assert extractor.frames_emitted == 0
    out = extractor.finish()
    assert extractor.frames_emitted == out.shape[0] == samples.size // 160
    assert maxdiff(out, UTTERANCE.compute(samples).numpy()) < STREAM_TOLERANCE


def test_memory_flat_on_endless_stream():
    rng = np.random.default_rng(1)
    extractor = RUNNING.stream()
    chunk, frames, largest = 1600, 0, 0
    for _ in range(10 * 60 * 10):  # ten minutes in 0.1 s chunks
        frames += extractor.accept(0.1 * rng.standard_normal(chunk).astype(np.float32)).shape[0]
        largest = max(largest, extractor.buffered_samples)
    assert largest < 2000
    frames += extractor.finish().shape[0]
    assert frames == 10 * 60 * 100


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("floor", ["running", "utterance"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_equals_utterances_alone(clips, floor, dtype):
    options = WhisperMelOptions(floor=floor)
    rng = np.random.default_rng(2)
    base = clips[SAMPLES[1].name]
    lengths = [0, 150, 200, 201, 399, 16000, 12345, base.size]
    utterances = [base[int(rng.integers(0, base.size - n + 1)) :][:n] for n in lengths]
    waveforms = torch.zeros(len(lengths), max(lengths), dtype=dtype)
    for row, samples in enumerate(utterances):
        waveforms[row, : samples.size] = torch.from_numpy(samples)
        waveforms[row, samples.size :] = 0.3  # whatever sits past a length must not matter
    feats, feat_lengths = TorchWhisperMel(options)(waveforms, torch.tensor(lengths))
    assert feats.dtype == dtype and feats.shape == (len(lengths), max(lengths) // 160, 80)
    assert feat_lengths.tolist() == [n // 160 for n in lengths]
    tolerance = STREAM_TOLERANCE if dtype == torch.float64 else FLOAT32_TOLERANCE
    for row, samples in enumerate(utterances):
        alone = options.compute(samples).numpy()
        count = samples.size // 160
        assert maxdiff(feats[row, :count].numpy(), alone) < tolerance
        assert (feats[row, count:] == 0).all()


def test_batch_of_only_short_inputs():
    feats, feat_lengths = TorchWhisperMel()(torch.zeros(3, 100), torch.tensor([0, 50, 100]))
    assert feats.shape == (3, 0, 80) and feat_lengths.tolist() == [0, 0, 0]
    assert compute_whisper_mel(np.zeros(0, dtype=np.float32)).shape == (0, 80)
    with pytest.raises(ValueError, match="1-D"):
        compute_whisper_mel(np.zeros((2, 400), dtype=np.float32))


# --- options ---------------------------------------------------------------------------------


def test_options_protocol_and_round_trip():
    options = WhisperMelOptions(num_mel_bins=128, floor="utterance")
    assert WhisperMelOptions.kind == options.kind == "whisper_mel"
    assert options.dim == 128 and RUNNING.frame_shift == pytest.approx(0.01)
    data = options.to_dict()
    assert data["kind"] == "whisper_mel" and data["floor"] == "utterance"
    assert WhisperMelOptions.from_dict(data) == options
    assert WhisperMelOptions.from_dict({}) == RUNNING
    assert isinstance(RUNNING.stream(), StreamingWhisperMel)
    feats = RUNNING.compute(np.zeros(1600, dtype=np.float32))
    assert isinstance(feats, torch.Tensor) and feats.dtype == torch.float32
    assert feats.shape == (10, 80)
    assert (feats == -1.5).all()  # digital silence: log10(1e-10) -> (-10 + 4) / 4


@pytest.mark.parametrize(
    "bad",
    [
        {"floor": "global"},
        {"sample_rate": 0},
        {"n_fft": 401},
        {"hop_length": 0},
        {"hop_length": 201},
        {"num_mel_bins": 0},
        {"floor_range": 0.0},
        {"floor_range": -8},
    ],
)
def test_options_validation(bad):
    with pytest.raises(DataError, match="whisper mel options") as error:
        WhisperMelOptions(**bad)
    assert "\n" not in str(error.value)


def test_from_dict_is_strict():
    with pytest.raises(DataError, match="unknown field.*n_mels"):
        WhisperMelOptions.from_dict({"kind": "whisper_mel", "n_mels": 80})
    with pytest.raises(DataError, match="kind"):
        WhisperMelOptions.from_dict({"kind": "fbank"})


def test_streaming_module_is_torch_free():
    code = (
        "import sys, edgeasr.audio.whisper_mel as m; "
        "m.StreamingWhisperMel().accept(m.np.zeros(800, dtype=m.np.float32)); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
