"""Decoding with a Whisper-based model: the joint CTC/Whisper second pass, segmented streams.

The model is imported from the installed Whisper tiny.en package with an untrained CTC head, so
tests that need a CTC head that knows the words give it peaky posteriors spelling a known text
(what a well-trained head would emit); everything else is the real encoder and decoder.
"""

import numpy as np
import pytest
import torch

from edgeasr.audio.io import load_audio
from edgeasr.decoding.joint_whisper import CTCPrefixScorer, joint_beam_search, spell_whisper_tokens
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.decoding.whisper_rescoring import ctc_align, ctc_scores
from edgeasr.model.package import load_model_dir
from edgeasr.model.whisper import TorchDecoderSteps
from edgeasr.text.normalize import normalize_text
from edgeasr.text.tokenizer import SPACE


@pytest.fixture(scope="module")
def whisper_model(whisper_imported):
    return load_model_dir(whisper_imported)


def _spelled_posteriors(tokenizer, text: str, frames: int, vocab: int) -> torch.Tensor:
    """CTC log-probs [frames, vocab] that spell ``text`` evenly over the frames (blank between)."""
    units = tokenizer.encode(text)
    log_probs = torch.full((frames, vocab), -12.0)
    log_probs[:, 0] = -0.01
    step = frames / (len(units) + 1)
    for i, unit in enumerate(units):
        t = int((i + 0.5) * step)
        log_probs[t, :] = -12.0
        log_probs[t, unit] = -0.01
    return log_probs.log_softmax(dim=-1)


def test_ctc_prefix_scorer_full_probability_equals_ctc_loss():
    torch.manual_seed(0)
    log_probs = torch.randn(15, 6).log_softmax(-1)
    for seq in ([1], [2, 2], [1, 2, 1, 3], [5, 5, 4]):
        scorer = CTCPrefixScorer(log_probs.numpy(), blank=0)
        r_n, r_b = scorer.initial()
        r_n, r_b = r_n[None], r_b[None]
        last, empty = np.array([-1]), np.array([True])
        previous_psi = 0.0
        for unit in seq:
            r_n, r_b, psi = scorer.extend_units(r_n, r_b, last, np.array([unit]), empty)
            assert float(psi[0]) <= previous_psi + 1e-9  # a longer prefix is never more likely
            previous_psi = float(psi[0])
            last, empty = np.array([unit]), np.array([False])
        expected = -torch.nn.functional.ctc_loss(log_probs[:, None], torch.tensor([seq]), torch.tensor([15]),
                                                 torch.tensor([len(seq)]), reduction="sum")
        assert float(scorer.final((r_n, r_b))[0]) == pytest.approx(float(expected), abs=1e-5)
        assert float(ctc_scores(log_probs, [seq])[0]) == pytest.approx(float(expected), abs=1e-5)


def test_ctc_align_places_tokens_on_their_peaks():
    log_probs = torch.full((10, 4), -9.0)
    log_probs[:, 0] = -0.01
    for t, unit in ((2, 1), (6, 2), (7, 2)):
        log_probs[t, 0], log_probs[t, unit] = -9.0, -0.01
    times, probs = ctc_align(log_probs.log_softmax(-1).numpy(), [1, 2])
    assert times == [2, 6] and all(p > 0.9 for p in probs)
    assert ctc_align(log_probs.numpy(), [1, 2, 3] * 5) == ([], [])  # more tokens than frames fit


def test_joint_search_writes_the_spoken_text_and_stops(whisper_model):
    """Free greedy decoding of an unpadded encoding repeats or drifts; the joint search, whose CTC
    scores say where the text ends, writes the sentence once and stops."""
    model, tokenizer = whisper_model.model, whisper_model.tokenizer
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    reference = normalize_text(open("samples/kokoro-male.txt").read())
    feats = whisper_model.features.compute(samples)
    encoded, _ = model.encode(feats[None], torch.tensor([feats.size(0)]), 0, -1)
    log_probs = _spelled_posteriors(tokenizer, reference, encoded.size(1), tokenizer.vocab_size)
    spelling = spell_whisper_tokens(whisper_model.whisper_tokenizer, tokenizer)
    found = joint_beam_search(TorchDecoderSteps(model.whisper_decoder), encoded, log_probs.numpy(), whisper_model.whisper_prompt, spelling,
                              tokenizer.piece_to_id(SPACE), beam_size=4, ctc_weight=0.5)
    assert found, "no hypothesis"
    assert tokenizer.decode(found[0][1]) == reference
    # each letter carries a share of its token's Whisper log-probability, spaces none
    tokens, units, _, shares = found[0]
    space = tokenizer.piece_to_id(SPACE)
    assert len(shares) == len(units) and all(s == 0 for u, s in zip(units, shares) if u == space)
    assert all(s <= 0 for s in shares) and sum(shares) < 0
    # the spelling never proposes digits: numbers are written in words, as references are
    whisper_tokenizer = whisper_model.whisper_tokenizer
    digit_tokens = [t for t in range(len(spelling.chars))
                    if any(ch.isdigit() for ch in whisper_tokenizer.decode([t]))]
    assert digit_tokens and all(spelling.chars[t] is None for t in digit_tokens)


def test_whisper_second_pass_in_a_stream(whisper_model):
    """whisper_rescoring streams, rescores each segment, and gives times within the audio."""
    recognizer = Recognizer(whisper_model, DecodeOptions(mode="whisper_rescoring", chunk_size=32, beam_size=2))
    assert recognizer.mode == "whisper_rescoring" and recognizer.endpoint_rules is not None
    samples = load_audio("samples/flite-awb.wav", sample_rate=16000)
    session = recognizer.stream()
    partials = []
    for start in range(0, len(samples), 3200):
        partials.append(session.accept(samples[start : start + 3200]))
    result = session.finish()
    duration = len(samples) / 16000
    assert all(0 <= w.start <= w.end <= duration + 0.05 for w in result.words)
    # results say which pass wrote them: the finals Whisper's, the open segment's partials the first pass's
    assert result.decoded_by == "whisper" and result.segments
    assert all(segment.decoded_by == "whisper" for segment in result.segments)
    assert any(p.text and p.decoded_by == "first_pass" for p in partials)


def test_long_stream_is_cut_into_segments_with_flat_state(whisper_model):
    """Whisper's positions end at 30 s: a 75 s stream must be cut at endpoints (forced cuts of a
    stream without pauses included), and the encoder state must not grow with the stream."""
    recognizer = Recognizer(whisper_model, DecodeOptions(mode="ctc_greedy", chunk_size=32))
    speech = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    rng = np.random.default_rng(0)
    stream_audio = np.concatenate([speech] * int(np.ceil(75 * 16000 / len(speech))))[: 75 * 16000]
    stream_audio = stream_audio + 0.001 * rng.standard_normal(stream_audio.size).astype(np.float32)
    session = recognizer.stream()
    sizes, endpoints = [], 0
    for start in range(0, len(stream_audio), 16000):
        session.accept(stream_audio[start : start + 16000])
        endpoints += session.is_endpoint()
        sizes.append(session.runner.encoder.state_bytes())
        assert session.runner.encoder.frames_encoded <= recognizer.max_segment_frames
    session.finish()
    assert endpoints >= 2  # 75 s cannot be one segment
    assert max(sizes) <= 1.05 * max(sizes[:30])  # state bounded by the segment, not the stream


def test_int8_decoding_copies_keep_scores_and_leave_the_weights_alone(whisper_model):
    """use_int8 runs decoding steps on int8 copies: scores move by little, the state dict not."""
    decoder = whisper_model.model.whisper_decoder
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    feats = whisper_model.features.compute(samples)
    encoded, _ = whisper_model.model.encoder(feats[None], torch.tensor([feats.size(0)]))
    tokenizer = whisper_model.whisper_tokenizer
    reference = open("samples/kokoro-male.txt").read().strip()
    candidates = [tokenizer.encode(reference), tokenizer.encode("it was going to rain in the region")]
    keys = set(decoder.state_dict())
    with torch.no_grad():
        exact = decoder.sequence_log_probs(whisper_model.whisper_prompt, candidates, encoded)
        decoder.use_int8()
        try:
            fast = decoder.sequence_log_probs(whisper_model.whisper_prompt, candidates, encoded)
        finally:
            decoder.use_int8(False)
    assert set(decoder.state_dict()) == keys
    per_token = (exact - fast).abs() / torch.tensor([len(c) + 1 for c in candidates])
    assert float(per_token.max()) < 0.15  # measured ~0.07 nat per token
    assert fast[0] > fast[1]  # the spoken sentence still wins


class _RecordingBackend:
    """Stands in for the second pass's backend: records what it is asked to encode."""

    blank = 0

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab
        self.seen = []

    def encode(self, feats, speech_frames=None):
        self.seen.append(feats)
        self.speech_frames = speech_frames
        ctc_frames = ((feats.shape[0] if speech_frames is None else speech_frames) + 1) // 2
        log_probs = np.log(np.full((ctc_frames, self.vocab), 1.0 / self.vocab, dtype=np.float32))
        encoded = np.zeros((1, (feats.shape[0] + 1) // 2, 4), np.float32)
        return encoded, log_probs, encoded[0, : log_probs.shape[0]]


@pytest.mark.parametrize("as_numpy", [True, False])
def test_second_pass_window_pads_with_whisper_silence(whisper_model, as_numpy):
    """The segment goes first in a window of silence at Whisper's floor (8 decades below the
    loudest value, 2.0 in its scaled units); the CTC side reads only the segment's frames."""
    from edgeasr.decoding.whisper_rescoring import WhisperSecondPass

    backend = _RecordingBackend(whisper_model.tokenizer.vocab_size)
    second = WhisperSecondPass(backend, whisper_model.tokenizer, whisper_model.whisper_tokenizer,
                               whisper_model.whisper_prompt, window_frames=300)
    feats = np.random.default_rng(0).uniform(-1.0, 1.5, (101, 80)).astype(np.float32)
    segment = feats if as_numpy else torch.from_numpy(feats)
    encoded, log_probs, _ = second._encode(segment)
    padded = backend.seen[-1]
    assert padded.shape == (300, 80) and type(padded) is type(segment)
    padded = np.asarray(padded)
    np.testing.assert_array_equal(padded[:101], feats)
    assert np.all(padded[101:] == np.float32(feats.max() - 2.0))
    # the decoder sees the window, the CTC head the segment alone
    assert backend.speech_frames == 101 and encoded.shape[1] == 150 and log_probs.shape[0] == 51
    # a segment as long as the window (or longer) is encoded as it is
    long = np.zeros((400, 80), np.float32)
    second._encode(long)
    assert backend.seen[-1] is long
    # "quietest": each mel bin continues at the segment's own quietest value
    quiet = WhisperSecondPass(backend, whisper_model.tokenizer, whisper_model.whisper_tokenizer,
                              whisper_model.whisper_prompt, window_frames=300, pad="quietest")
    quiet._encode(segment)
    padded = np.asarray(backend.seen[-1])
    np.testing.assert_array_equal(padded[:101], feats)
    np.testing.assert_array_equal(padded[101:], np.broadcast_to(feats.min(axis=0), (199, 80)))
    with pytest.raises(ValueError, match="pad must be 'floor' or 'quietest'"):
        WhisperSecondPass(backend, whisper_model.tokenizer, whisper_model.whisper_tokenizer,
                          whisper_model.whisper_prompt, pad="noise")
    unpadded = WhisperSecondPass(backend, whisper_model.tokenizer, whisper_model.whisper_tokenizer,
                                 whisper_model.whisper_prompt)
    unpadded._encode(feats)
    assert backend.seen[-1] is feats


def test_second_pass_window_option_is_checked():
    from edgeasr.errors import EdgeAsrError

    for bad in (-1.0, 31.0, float("nan")):
        with pytest.raises(EdgeAsrError, match="--second-pass-window must be between 0 and 30"):
            DecodeOptions(second_pass_window=bad).validate()
    DecodeOptions(second_pass_window=30.0).validate()
    with pytest.raises(EdgeAsrError, match="--second-pass-pad must be 'floor' or 'quietest'"):
        DecodeOptions(second_pass_pad="noise").validate()
