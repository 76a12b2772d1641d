"""CTC search, attention rescoring and the streaming recognizer."""

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import speechlike

from edgeasr.decoding.ctc import Hypothesis, PrefixBeamSearch, ctc_greedy, ctc_prefix_beam_search
from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
from edgeasr.decoding.rescoring import attention_rescore
from edgeasr.model.package import load_model_dir, save_model_dir


def brute_force_ctc(log_probs: torch.Tensor) -> dict[tuple, float]:
    """Probability of every collapsed label sequence, by enumerating all paths."""
    frames, vocab = log_probs.shape
    totals: dict[tuple, float] = {}
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed, previous = [], None
        for token in path:
            if token != 0 and token != previous:
                collapsed.append(token)
            previous = token
        p = math.exp(sum(float(log_probs[t, k]) for t, k in enumerate(path)))
        totals[tuple(collapsed)] = totals.get(tuple(collapsed), 0.0) + p
    return totals


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prefix_beam_search_with_a_wide_beam_is_exact(seed):
    torch.manual_seed(seed)
    log_probs = torch.log_softmax(torch.randn(5, 3) * 2, dim=-1)
    exact = sorted(brute_force_ctc(log_probs).items(), key=lambda kv: -kv[1])[:4]
    # no pruning: the search is then exact for a beam this wide
    found = ctc_prefix_beam_search(log_probs, beam_size=64, token_threshold=math.inf, score_threshold=math.inf)[:4]
    assert [h.tokens for h in found] == [tokens for tokens, _ in exact]
    for hyp, (_, p) in zip(found, exact):
        assert math.exp(hyp.score) == pytest.approx(p, rel=1e-6)


def test_token_pruning_only_drops_what_cannot_matter():
    """Tokens far below a frame's best are skipped: the best hypothesis stays the exact one's
    on peaky (CTC-like) frames, and blank-only frames update the beams in place."""
    torch.manual_seed(5)
    logits = torch.randn(60, 8) * 4
    logits[::2, 0] += 12  # every other frame nearly all blank, as CTC heads emit
    log_probs = torch.log_softmax(logits, dim=-1)
    exact = ctc_prefix_beam_search(log_probs, beam_size=8, token_threshold=math.inf, score_threshold=math.inf)
    pruned = ctc_prefix_beam_search(log_probs, beam_size=8, token_threshold=5.0)
    assert pruned[0].tokens == exact[0].tokens
    assert pruned[0].score == pytest.approx(exact[0].score, abs=0.05)


def test_incremental_search_equals_one_shot_search():
    torch.manual_seed(3)
    log_probs = torch.log_softmax(torch.randn(40, 6) * 3, dim=-1)
    whole = ctc_prefix_beam_search(log_probs, beam_size=4)
    search = PrefixBeamSearch(beam_size=4)
    for start in range(0, 40, 7):
        search.step(log_probs[start : start + 7])
    pieces = search.nbest()
    assert [h.tokens for h in pieces] == [h.tokens for h in whole]
    assert [h.score for h in pieces] == pytest.approx([h.score for h in whole])


def test_greedy_collapses_repeats_and_blanks_and_keeps_times():
    ids = [0, 2, 2, 0, 2, 3, 3, 0]
    log_probs = torch.full((len(ids), 4), -10.0)
    for t, k in enumerate(ids):
        log_probs[t, k] = 0.0
    hyp = ctc_greedy(log_probs)
    assert hyp.tokens == (2, 2, 3)
    assert hyp.times == (1, 4, 5)


@pytest.mark.parametrize("mode", ["ctc_greedy", "ctc_prefix_beam", "attention_rescoring"])
@pytest.mark.parametrize("chunk", [1, 4, 16])
def test_streaming_and_offline_give_the_same_text(tiny_model, mode, chunk):
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode=mode, chunk_size=chunk, beam_size=4))
    audio = speechlike(2.3, seed=chunk)
    offline = recognizer.transcribe(audio, streaming=False)
    session = recognizer.stream()
    rng = np.random.default_rng(0)
    position = 0
    while position < audio.size:
        size = int(rng.integers(1, 4000))
        session.accept(audio[position : position + size])
        position += size
    streamed = session.finish()
    assert offline.text, "the biased model should emit something"
    assert streamed.text == offline.text
    assert streamed.tokens == offline.tokens


def test_result_has_timestamps_confidence_and_nbest(tiny_model):
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode="attention_rescoring", beam_size=4))
    result = recognizer.transcribe(speechlike(2.0, seed=5))
    assert len(result.token_times) == len(result.tokens) > 0
    assert result.token_times == sorted(result.token_times)
    assert all(0.0 <= t <= 2.0 for t in result.token_times)
    assert 0.0 < result.confidence <= 1.0
    assert 1 <= len(result.nbest) <= 4 and result.nbest[0]["text"] == result.text
    assert " ".join(w.word for w in result.words) == result.text
    assert all(w.start <= w.end for w in result.words)


def test_last_words_are_not_dropped_at_end_of_stream(tiny_model):
    """Audio shorter than one chunk still produces output after finish()."""
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode="ctc_greedy", chunk_size=16))
    audio = speechlike(0.5, seed=9)  # 50 feature frames: less than one 16-frame chunk (67 frames)
    session = recognizer.stream()
    assert session.accept(audio).text == ""
    final = session.finish()
    assert final.text == recognizer.transcribe(audio, streaming=False).text != ""


def test_rescoring_prefers_what_the_decoder_finds_likely(tiny_model):
    packaged = load_model_dir(tiny_model)
    model = packaged.model
    encoded = torch.randn(1, 12, 64)
    a, b = Hypothesis((3, 4, 5), score=-1.0), Hypothesis((6, 7), score=-1.0)
    ranked = attention_rescore(model, [a, b], encoded, ctc_weight=0.0)
    assert {ranked[0][0].tokens, ranked[1][0].tokens} == {a.tokens, b.tokens}
    # A huge CTC weight with a better CTC score for b makes b win whatever the decoder says.
    b_better = Hypothesis((6, 7), score=0.0)
    assert attention_rescore(model, [a, b_better], encoded, ctc_weight=1000.0)[0][0].tokens == (6, 7)
    # With equal CTC scores the combined score is the decoder score plus the same constant.
    att_only = {h.tokens: s for h, s in ranked}
    mixed = {h.tokens: s for h, s in attention_rescore(model, [a, b], encoded, ctc_weight=2.0)}
    assert mixed[a.tokens] - att_only[a.tokens] == pytest.approx(-2.0)
    assert mixed[b.tokens] - att_only[b.tokens] == pytest.approx(-2.0)


def test_model_directory_round_trip_is_exact(tiny_model, tmp_path):
    first = load_model_dir(tiny_model)
    save_model_dir(tmp_path / "again", first.model, first.tokenizer, first.features, first.streaming)
    second = load_model_dir(tmp_path / "again")
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert second.streaming == first.streaming


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def test_thirty_minutes_stream_with_bounded_memory(tiny_model):
    """No positional-encoding limit, no cache that grows when left context is limited."""
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode="ctc_greedy", chunk_size=16, num_left_chunks=4))
    session = recognizer.stream()
    rng = np.random.default_rng(0)
    second = speechlike(1.0, seed=1)
    memory_at = {}
    for index in range(30 * 60):
        session.accept(second * rng.uniform(0.5, 1.0))
        if index in (5 * 60, 30 * 60 - 1):
            memory_at[index] = resident_bytes()
    result = session.finish()
    assert session.samples_seen == 30 * 60 * 16000
    # Every 40 ms encoder frame of the half hour reached the search (the last partial chunk too).
    assert abs(session.search.frame_offset - 30 * 60 * 25) <= 2
    assert result.text
    caches = session.runner.encoder.att_caches
    assert all(cache.size(2) <= 4 * 16 for cache in caches)
    growth = memory_at[30 * 60 - 1] - memory_at[5 * 60]
    assert growth < 30 * 2**20, f"memory grew by {growth / 2**20:.1f} MiB over 25 minutes of audio"


def test_batched_offline_decoding_equals_one_at_a_time(tiny_model):
    recognizer = Recognizer.load(tiny_model, DecodeOptions(mode="attention_rescoring", chunk_size=4, beam_size=4))
    clips = [speechlike(seconds, seed) for seconds, seed in ((1.1, 1), (2.7, 2), (0.6, 3))]
    batched = recognizer.transcribe_batch(clips)
    alone = [recognizer.transcribe(c, streaming=False) for c in clips]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.token_times for r in batched] == [r.token_times for r in alone]


def test_searches_accept_tensors_that_require_grad_and_numpy_arrays():
    import numpy as np

    from edgeasr.decoding.ctc import ctc_greedy, ctc_prefix_beam_search

    torch.manual_seed(0)
    logits = torch.randn(12, 6, requires_grad=True)
    log_probs = logits.log_softmax(-1)  # as the trainer's dev check passes them
    as_array = log_probs.detach().numpy()
    assert ctc_greedy(log_probs).tokens == ctc_greedy(as_array).tokens
    assert [h.tokens for h in ctc_prefix_beam_search(log_probs)] == [h.tokens for h in ctc_prefix_beam_search(as_array)]
