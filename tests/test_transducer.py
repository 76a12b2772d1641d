"""The transducer head: RNN-T loss against a brute-force sum over alignments, its gradients,
padding, and a tiny head that learns to transcribe, decoded greedily in chunks."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeasr.decoding.fusion import HotwordScorer
from edgeasr.decoding.transducer_search import TransducerBeamSearch, TransducerGreedySearch
from edgeasr.model.transducer import TransducerConfig, TransducerHead, rnnt_loss


def brute_force_nll(log_probs: torch.Tensor, targets: list[int], blank: int = 0) -> float:
    """-log sum over every alignment: paths of T blanks and U emissions, the last move a blank."""
    frames, nodes, _ = log_probs.shape
    total = []
    steps = frames + len(targets) - 1  # moves before the final blank
    for emit_positions in itertools.combinations(range(steps), len(targets)):
        t = u = 0
        score = 0.0
        for move in range(steps):
            if move in emit_positions:
                score += float(log_probs[t, u, targets[u]])
                u += 1
            else:
                score += float(log_probs[t, u, blank])
                t += 1
        score += float(log_probs[frames - 1, len(targets), blank])
        total.append(score)
    return -math.log(sum(math.exp(s) for s in total))


@pytest.mark.parametrize("frames,targets", [(1, []), (1, [2]), (3, [1]), (4, [1, 2, 2]), (5, [3, 1, 2, 3])])
def test_loss_equals_the_sum_over_all_alignments(frames, targets):
    torch.manual_seed(frames + len(targets))
    logits = torch.randn(1, frames, len(targets) + 1, 4, dtype=torch.float64)
    target = torch.tensor([targets or [0]])[:, : len(targets)] if targets else torch.zeros(1, 0, dtype=torch.long)
    loss = rnnt_loss(logits, target, torch.tensor([frames]), torch.tensor([len(targets)]), reduction="none")
    expected = brute_force_nll(logits[0].log_softmax(-1), targets)
    assert float(loss[0]) == pytest.approx(expected, rel=1e-5)


def test_gradients_are_those_of_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[1, 4], [2, 0]])
    lengths, target_lengths = torch.tensor([4, 3]), torch.tensor([2, 1])
    # float64 through the recursion: gradcheck's finite differences need it
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x.double(), targets, lengths, target_lengths, reduction="sum").double(), (logits,),
        eps=1e-6, atol=1e-4)


def test_padding_changes_nothing():
    """Each utterance of a padded batch gets the loss it has alone."""
    torch.manual_seed(1)
    a = torch.randn(1, 5, 4, 6)
    b = torch.randn(1, 3, 2, 6)
    batch = torch.randn(2, 5, 4, 6)  # padding is garbage, not zeros
    batch[0] = a[0]
    batch[1, :3, :2] = b[0]
    targets = torch.tensor([[1, 2, 3], [4, 9, 9]])
    together = rnnt_loss(batch, targets, torch.tensor([5, 3]), torch.tensor([3, 1]), reduction="none")
    alone_a = rnnt_loss(a, targets[:1], torch.tensor([5]), torch.tensor([3]), reduction="none")
    alone_b = rnnt_loss(b, targets[1:, :1], torch.tensor([3]), torch.tensor([1]), reduction="none")
    assert torch.allclose(together, torch.cat([alone_a, alone_b]), atol=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="target positions"):
        rnnt_loss(torch.randn(1, 3, 2, 4), torch.tensor([[1, 2]]), torch.tensor([3]), torch.tensor([2]))
    with pytest.raises(ValueError, match="frames"):
        rnnt_loss(torch.randn(1, 3, 3, 4), torch.tensor([[1, 2]]), torch.tensor([0]), torch.tensor([2]))


def test_a_tiny_transducer_learns_and_greedy_decodes_in_chunks():
    """Encoder frames that announce each token (a random code every third frame, noise between):
    the head learns to emit the tokens, and greedy search over chunks of 4 frames gives the same
    tokens as over the whole utterance. (No token repeats the one before it: a repeat announced
    by an identical frame, after an identical context, is indistinguishable from the frame of the
    first one in this toy; real encoder frames differ.)"""
    torch.manual_seed(0)
    vocab, dim = 6, 16
    head = TransducerHead(TransducerConfig(vocab_size=vocab, encoder_dim=dim, predictor_dim=16, joint_dim=32))
    codes = torch.randn(vocab, dim)

    def sample(batch: int):
        lengths = torch.randint(2, 5, (batch,))
        targets = torch.randint(1, vocab, (batch, 4))
        for u in range(1, 4):  # no token equal to the one before it
            same = targets[:, u] == targets[:, u - 1]
            targets[same, u] = targets[same, u] % (vocab - 1) + 1
        frames = 3 * 4 + 2
        encoded = 0.3 * torch.randn(batch, frames, dim)
        for b in range(batch):
            for u in range(int(lengths[b])):
                encoded[b, 3 * u + 1] += codes[targets[b, u]]
        return encoded, torch.full((batch,), frames), targets, lengths

    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(300):
        encoded, frames, targets, lengths = sample(16)
        loss = head.loss(encoded, frames, targets, lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    encoded, _, targets, lengths = sample(8)
    right = 0
    right_beam = 0
    for b in range(8):
        for search_class, options in [(TransducerGreedySearch, {}), (TransducerBeamSearch, {"beam_size": 4})]:
            whole = search_class(head.runner(), **options)
            whole.step(encoded[b].numpy())
            chunked = search_class(head.runner(), **options)
            for start in range(0, encoded.size(1), 4):
                chunked.step(encoded[b, start : start + 4].numpy())
            assert [(h.tokens, h.times) for h in chunked.nbest()] == [(h.tokens, h.times) for h in whole.nbest()]
            assert [h.score for h in chunked.nbest()] == pytest.approx([h.score for h in whole.nbest()])
            correct = list(whole.nbest()[0].tokens) == targets[b, : int(lengths[b])].tolist()
            if search_class is TransducerGreedySearch:
                right += correct
            else:
                right_beam += correct
    assert right >= 7, f"{right}/8 utterances transcribed"
    assert right_beam >= 7, f"{right_beam}/8 utterances transcribed by the beam"


class TableRunner:
    """A transducer whose joint ignores the context: each "encoder frame" is already the joint's
    log-probabilities, so a test can write the distribution it wants per frame."""

    context, blank = 1, 0

    def project(self, frames):
        return np.asarray(frames, dtype=np.float64)

    def predict(self, contexts):
        return np.zeros((len(contexts), 1))

    def join(self, frame, predicted):
        return np.tile(frame, (len(predicted), 1))


def one_symbol_paths(runner, frames):
    """Probability of every token sequence when each frame emits blank or one token: the sum
    over all V^T symbol paths (the model modified beam search searches), by enumeration."""
    projected = runner.project(frames)
    vocab = runner.join(projected[0], runner.predict(np.zeros((1, runner.context), dtype=np.int64))).shape[1]
    totals = {}
    for path in itertools.product(range(vocab), repeat=len(projected)):
        tokens, log_p = (), 0.0
        for t, symbol in enumerate(path):
            context = ((runner.blank,) * runner.context + tokens)[-runner.context:]
            log_probs = runner.join(projected[t], runner.predict(np.array([context], dtype=np.int64)))[0]
            log_p += float(log_probs[symbol])
            if symbol != runner.blank:
                tokens += (symbol,)
        totals[tokens] = np.logaddexp(totals.get(tokens, -np.inf), log_p)
    return totals


def test_modified_beam_search_with_a_wide_beam_is_exact():
    """With room for every hypothesis, the beam's n-best are the token sequences of highest total
    probability over all one-symbol-per-frame paths, with those probabilities (a real head: its
    joint depends on the context, so merging hypotheses must keep their predictor state right)."""
    torch.manual_seed(1)
    vocab, dim, frames = 3, 8, 4
    head = TransducerHead(TransducerConfig(vocab_size=vocab, encoder_dim=dim, predictor_dim=8, joint_dim=8))
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.mul_(4)  # peakier, so the ranking is not a near-tie
    encoded = torch.randn(frames, dim).numpy()
    exact = sorted(one_symbol_paths(head.runner(), encoded).items(), key=lambda kv: -kv[1])[:5]
    search = TransducerBeamSearch(head.runner(), beam_size=vocab ** frames, token_beam=vocab - 1)
    search.step(encoded)
    found = search.nbest(5)
    assert [h.tokens for h in found] == [tokens for tokens, _ in exact]
    assert [h.score for h in found] == pytest.approx([p for _, p in exact], abs=1e-5)
    assert all(len(h.times) == len(h.tokens) and list(h.times) == sorted(h.times) for h in found)


def test_beam_search_fuses_hotwords_and_beats_greedy_where_paths_merge():
    """Frames where "ab" is spelled by two alignments: each alone is less likely than "ac", together
    they are likelier, which the beam finds by merging and greedy cannot. A hotword on "ac" then
    brings it back: the fused scorer reaches the transducer search as it does the CTC search."""
    letters = ["", "a", "b", "c"]
    log = np.log
    frames = [
        [log(0.05), log(0.9), log(0.025), log(0.025)],  # a
        [log(0.35), log(0.01), log(0.30), log(0.34)],  # b now, or c now, or wait
        [log(0.5), log(0.005), log(0.49), log(0.005)],  # b (after waiting), or not
        [log(0.98), log(0.01), log(0.005), log(0.005)],
    ]
    greedy = TransducerGreedySearch(TableRunner(), max_symbols=1)
    greedy.step(np.array(frames))
    beam = TransducerBeamSearch(TableRunner(), beam_size=6)
    beam.step(np.array(frames))
    text = lambda h: "".join(letters[t] for t in h.tokens)  # noqa: E731
    assert text(greedy.nbest()[0]) == "a"  # blank wins frames 1 and 2 (0.35 > 0.34 > 0.30; 0.5 > 0.49)
    assert text(beam.nbest()[0]) == "ab"
    biased = TransducerBeamSearch(TableRunner(), beam_size=6, scorer=HotwordScorer([("ac", 3.0)]),
                                  piece_texts=letters)
    biased.step(np.array(frames))
    assert text(biased.nbest()[0]) == "ac"
    assert biased.nbest()[0].fused_score > 0


STEPS, LR = 150, 5e-3


@pytest.fixture(scope="module")
def transducer_model(tmp_path_factory):
    """A tiny fbank model with CTC and transducer heads, trained a few steps on one clip."""
    from edgeasr.audio.fbank import FbankOptions
    from edgeasr.audio.io import load_audio
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import StreamingDefaults, save_model_dir
    from edgeasr.text.tokenizer import Tokenizer

    text = open("samples/kokoro-male.txt").read().strip().lower()
    tokenizer = Tokenizer.train([text], kind="char")
    torch.manual_seed(0)
    config = ModelConfig.from_dict({
        "vocab_size": tokenizer.vocab_size,
        "encoder": {"d_model": 64, "num_heads": 4, "d_ff": 128, "num_blocks": 2, "dropout": 0.0},
        "decoder": {"num_layers": 0},
        "ctc_weight": 1.0,
        "transducer": {"predictor_dim": 32, "joint_dim": 64, "context": 2},
        "static_chunk_size": 4, "dynamic_chunk": False,
    })
    model = ASRModel(config)
    features = FbankOptions()
    feats = features.compute(load_audio("samples/kokoro-male.wav", sample_rate=16000))
    tokens = torch.tensor([tokenizer.encode(text)])
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        out = model(feats[None], torch.tensor([feats.size(0)]), tokens, torch.tensor([tokens.size(1)]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["transducer"].detach()))
    directory = save_model_dir(tmp_path_factory.mktemp("transducer"), model.eval(), tokenizer, features,
                               StreamingDefaults(chunk_size=4, num_left_chunks=-1))
    return directory, losses, text


def test_transducer_head_trains_in_the_model_and_decodes_streaming(transducer_model):
    """The model's loss includes the transducer's and it falls; transducer_greedy streams through
    the decoding core (endpointing by the CTC head) and gives the offline text."""
    import edgeasr
    from edgeasr.audio.io import load_audio
    from edgeasr.evaluate.metrics import char_errors

    directory, losses, text = transducer_model
    assert losses[-1] < 0.5 * losses[0]
    recognizer = edgeasr.load_model(str(directory), mode="transducer_greedy", segment=False)
    assert recognizer.mode == "transducer_greedy"
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    offline = recognizer.transcribe(samples)
    session = recognizer.stream()
    for start in range(0, len(samples), 1234):
        session.accept(samples[start : start + 1234])
    streamed = session.finish()
    assert streamed.text == offline.text
    assert char_errors(text, streamed.text).rate < 60  # it learnt the clip it saw (60 steps)
    assert [w.start for w in streamed.words] == sorted(w.start for w in streamed.words)


def test_transducer_beam_streams_with_hotwords_through_the_core(transducer_model):
    """transducer_beam: streaming equals offline, the n-best is ranked, and a hotword list reaches
    the transducer's search (its fused score shows on the n-best)."""
    import edgeasr
    from edgeasr.audio.io import load_audio

    directory, _, text = transducer_model
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    recognizer = edgeasr.load_model(str(directory), mode="transducer_beam", beam_size=4, segment=False)
    offline = recognizer.transcribe(samples)
    session = recognizer.stream()
    for start in range(0, len(samples), 2345):
        session.accept(samples[start : start + 2345])
    streamed = session.finish()
    assert streamed.text == offline.text and len(offline.nbest) > 1
    scores = [h["score"] for h in offline.nbest]
    assert scores == sorted(scores, reverse=True)
    word = max(text.split(), key=len)
    biased = edgeasr.load_model(str(directory), mode="transducer_beam", beam_size=4, segment=False,
                                hotwords=[f"{word} :2"]).transcribe(samples)
    assert biased.nbest[0]["score"] != offline.nbest[0]["score"]


@pytest.mark.parametrize("int8", [False, True])
def test_onnx_transducer_graphs_give_the_torch_nbest(transducer_model, tmp_path, int8):
    """The export writes the predictor and joint graphs; ONNX Runtime decodes both transducer
    modes with the same search as torch: the same n-best (float), nearly the same text (int8)."""
    import edgeasr
    from edgeasr.audio.io import load_audio
    from edgeasr.evaluate.metrics import char_errors
    from edgeasr.export.onnx import export_onnx

    directory, _, _ = transducer_model
    out = tmp_path / "onnx"
    metadata = export_onnx(str(directory), out, int8=int8)
    assert metadata["transducer"]["context"] == 2
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    for mode in ("transducer_greedy", "transducer_beam"):
        torch_result = edgeasr.load_model(str(directory), "torch", mode=mode, beam_size=4).transcribe(samples)
        onnx_result = edgeasr.load_model(str(out), mode=mode, beam_size=4, int8=int8).transcribe(samples)
        if int8:  # int8 encoder and joint: near the float text, not equal to it (a model trained 150 steps)
            assert char_errors(torch_result.text, onnx_result.text).rate < 20
            continue
        assert [h["text"] for h in onnx_result.nbest] == [h["text"] for h in torch_result.nbest]
        assert [h["score"] for h in onnx_result.nbest] == pytest.approx([h["score"] for h in torch_result.nbest],
                                                                        abs=1e-3)


def test_transducer_mode_needs_a_transducer_head(tiny_model):
    import edgeasr
    from edgeasr.errors import EdgeAsrError

    with pytest.raises(EdgeAsrError, match="transducer head"):
        edgeasr.load_model(str(tiny_model), mode="transducer_greedy")


def test_transducer_benchmark_writes_rows_and_a_report_section(transducer_model, tmp_path):
    import json

    from benchmark_helpers import load_benchmark
    from edgeasr.data.manifest import Utterance, write_manifest

    directory, _, text = transducer_model
    manifest = tmp_path / "clip.jsonl"
    clip = str(Path("samples/kokoro-male.wav").resolve())  # manifests resolve paths against their folder
    write_manifest(manifest, [Utterance(audio=clip, text=text, duration=5.0)])
    out, report = tmp_path / "results" / "transducer.json", tmp_path / "BENCHMARKS.md"
    assert load_benchmark("transducer").main([
        "--model", str(directory), "--manifest", f"clip={manifest}",
        "--modes", "ctc_greedy,transducer_greedy,transducer_beam+lm+dr", "--lm", "models/default/lm",
        "--source-lm", "models/default/lm", "--source-lm-weight", "0.5",
        "--out", str(out), "--report", str(report)]) == 0
    result = json.loads(out.read_text())
    rows = result["sets"]["clip"]["rows"]
    assert set(rows) == {"ctc_greedy", "transducer_greedy", "transducer_beam+lm+dr"}
    assert result["source_lm"] == "models/default/lm" and result["source_lm_weight"] == 0.5
    assert rows["transducer_greedy"]["wer"] < rows["ctc_greedy"]["wer"]  # the transducer learnt faster here
    assert rows["transducer_greedy"]["rtf"] > 0
    assert "## Transducer head against CTC" in report.read_text()


@pytest.mark.parametrize("weight_bits", [8, 4])
def test_qat_of_the_whole_transducer_trains_packages_and_decodes(transducer_model, tmp_path, weight_bits):
    """W8A8 / W4A8 fake-quant on the encoder, CTC head, prediction network and joint (every
    Linear and Conv of the model), from the float transducer: the quantized model keeps learning,
    its directory stores the packed codes and decodes in transducer_beam as it did before saving."""
    import edgeasr
    from edgeasr.audio.io import load_audio
    from edgeasr.decoding.recognizer import DecodeOptions, Recognizer
    from edgeasr.model.asr import ASRModel, ModelConfig
    from edgeasr.model.package import PackagedModel, load_model_dir, load_weights_from, save_model_dir
    from edgeasr.quant.qat import quantized_layers

    directory, _, text = transducer_model
    source = load_model_dir(directory)
    config = source.model.config.to_dict()
    config["quantization"] = {"weight_bits": weight_bits, "act_bits": 8, "layers": {"ctc*": {"weight_bits": 8}}}
    model = ASRModel(ModelConfig.from_dict(config))
    load_weights_from(model, source)
    layers = quantized_layers(model)
    assert {"transducer.predictor.mix", "transducer.joiner.out", "transducer.joiner.encoder_proj"} <= set(layers)
    assert layers["transducer.joiner.out"].weight_bits == weight_bits
    feats = source.features.compute(load_audio("samples/kokoro-male.wav", sample_rate=16000))
    tokens = torch.tensor([source.tokenizer.encode(text)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        out = model(feats[None], torch.tensor([feats.size(0)]), tokens, torch.tensor([tokens.size(1)]))
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(float(out["transducer"].detach()))
    assert min(losses[-5:]) < losses[0]
    model.eval()
    saved = save_model_dir(tmp_path / "qat", model, source.tokenizer, source.features, source.streaming)
    samples = load_audio("samples/kokoro-male.wav", sample_rate=16000)
    reloaded = edgeasr.load_model(str(saved), mode="transducer_beam", beam_size=4, segment=False)
    assert reloaded.model.config.quantization["weight_bits"] == weight_bits
    in_memory = Recognizer(PackagedModel(model=model, tokenizer=source.tokenizer, features=source.features,
                                         streaming=source.streaming), DecodeOptions(mode="transducer_beam", beam_size=4,
                                                                                   segment=False))
    assert reloaded.transcribe(samples).text == in_memory.transcribe(samples).text


def _prefix_probability(log_probs, prefix: tuple[int, ...], blank: int = 0) -> float:
    """log P(a path emits ``prefix`` first), by brute force over its emission frames
    t_1 <= ... <= t_k: the path waits with blanks and emits each unit at its frame.
    ``log_probs(context, t)`` is the joint's log-probabilities after ``context``."""
    frames = log_probs.frames
    total = []
    for times in itertools.combinations_with_replacement(range(frames), len(prefix)):
        score, t = 0.0, 0
        for u, (when, unit) in enumerate(zip(times, prefix)):
            while t < when:
                score += log_probs(prefix[:u], t)[blank]
                t += 1
            score += log_probs(prefix[:u], t)[unit]
        total.append(score)
    return float(np.logaddexp.reduce(total))


def test_transducer_prefix_scorer_is_the_sum_over_alignments():
    """The joint search's transducer scores (edgeasr.decoding.joint_whisper): each prefix's
    probability is the sum over the alignments that emit it first, the whole sequence's is
    the RNN-T loss's, and a mix with CTC is the weighted sum of the two."""
    from edgeasr.decoding.joint_whisper import CTCPrefixScorer, MixedPrefixScorer, TransducerPrefixScorer

    torch.manual_seed(3)
    vocab, dim, frames = 4, 8, 5
    head = TransducerHead(TransducerConfig(vocab_size=vocab, encoder_dim=dim, predictor_dim=8, joint_dim=8))
    encoded = torch.randn(frames, dim)
    runner = head.runner()
    scorer = TransducerPrefixScorer(runner, encoded.numpy())

    def joint(context, t):
        padded = (0, 0) + tuple(context)
        predicted = runner.predict(np.array([padded[-2:]], dtype=np.int64))
        return runner.join(runner.project(encoded.numpy())[t], predicted)[0].astype(np.float64)

    joint.frames = frames
    sequence = (2, 1, 1)
    states = tuple(s[None] for s in scorer.initial())
    for u, unit in enumerate(sequence):
        states, psi = scorer.extend(states, [sequence[:u]], np.array([unit]))
        assert float(psi[0]) == pytest.approx(_prefix_probability(joint, sequence[: u + 1]), abs=1e-4)
    with torch.no_grad():
        loss = head.loss(encoded[None], torch.tensor([frames]), torch.tensor([sequence]), torch.tensor([3]))
    assert float(scorer.final(states, [sequence])[0]) == pytest.approx(-float(loss), abs=1e-4)

    ctc_log_probs = torch.randn(frames, vocab).log_softmax(-1).numpy()
    ctc = CTCPrefixScorer(ctc_log_probs)
    mixed = MixedPrefixScorer([(ctc, 0.25), (TransducerPrefixScorer(runner, encoded.numpy()), 0.75)])
    states = tuple(s[None] for s in mixed.initial())
    ctc_states = tuple(s[None] for s in ctc.initial())
    for u, unit in enumerate(sequence):
        states, psi = mixed.extend(states, [sequence[:u]], np.array([unit]))
        ctc_states, ctc_psi = ctc.extend(ctc_states, [sequence[:u]], np.array([unit]))
        expected = 0.25 * ctc_psi[0] + 0.75 * _prefix_probability(joint, sequence[: u + 1])
        assert float(psi[0]) == pytest.approx(float(expected), abs=1e-4)
    expected_final = 0.25 * ctc.final(ctc_states)[0] - 0.75 * float(loss)
    assert float(mixed.final(states, [sequence])[0]) == pytest.approx(float(expected_final), abs=1e-4)


def test_transducer_whisper_needs_both_heads(transducer_model):
    """The two-pass transducer mode is refused, with the reason, on a model without Whisper's decoder."""
    import edgeasr
    from edgeasr.errors import EdgeAsrError

    directory, _, _ = transducer_model
    with pytest.raises(EdgeAsrError, match="transducer_whisper needs a model with a Whisper decoder"):
        edgeasr.load_model(str(directory), mode="transducer_whisper")
    with pytest.raises(EdgeAsrError, match="--second-pass-transducer-weight must be between 0 and 1"):
        edgeasr.load_model(str(directory), mode="transducer_beam", second_pass_transducer_weight=1.5)


def test_transducer_whisper_writes_the_finals_on_torch_and_onnx(tmp_path):
    """The shipped transducer model in its two-pass mode: the transducer's partials, then
    Whisper's decoder kept on the audio by the transducer's prefix scores writes the final,
    far better than the transducer's beam alone; ONNX Runtime's graphs give the same text."""
    import edgeasr
    from edgeasr.evaluate.metrics import char_errors
    from edgeasr.export.onnx import export_onnx

    reference = open("samples/flite-awb.txt").read().strip().lower()
    one_pass = edgeasr.load_model("models/whisper-rnnt", mode="transducer_beam", beam_size=4)
    two_pass = edgeasr.load_model("models/whisper-rnnt", mode="transducer_whisper", beam_size=4)
    assert two_pass.second_pass.transducer is not None
    first = one_pass.transcribe("samples/flite-awb.wav").text
    final = two_pass.transcribe("samples/flite-awb.wav")
    assert char_errors(reference, final.text).rate < 5 < char_errors(reference, first).rate
    assert final.decoded_by == "whisper"
    assert final.words and final.words[-1].end <= 6.0
    export_onnx("models/whisper-rnnt", tmp_path / "onnx", int8=False)
    onnx = edgeasr.load_model(str(tmp_path / "onnx"), mode="transducer_whisper", beam_size=4)
    assert onnx.transcribe("samples/flite-awb.wav").text == final.text


def test_a_4bit_transducer_head_exports_exact_4bit_graphs(tmp_path):
    """A head whose weights sit on the 4-bit grid (as QAT W4 leaves them) exports .int4.onnx
    graphs whose Linear layers (torch exports them as Gemm) are MatMulNBits holding those codes;
    ONNX Runtime's joint then gives the torch head's log-probabilities (activations at 8 bits
    inside MatMulNBits: close, not equal), and a float head gets no such graphs."""
    import onnx

    from edgeasr.export.onnx import export_transducer
    from edgeasr.export.runtime import OnnxTransducerRunner
    from edgeasr.quant.fake_quant import weight_qmax

    torch.manual_seed(2)
    head = TransducerHead(TransducerConfig(vocab_size=8, encoder_dim=32, predictor_dim=32, joint_dim=32)).eval()
    with torch.no_grad():
        for linear in (head.joiner.encoder_proj, head.joiner.predictor_proj, head.joiner.out):
            scale = linear.weight.abs().amax(dim=1, keepdim=True) / weight_qmax(4)
            linear.weight.copy_(torch.round(linear.weight / scale) * scale)
    meta = export_transducer(head, tmp_path, int8=True, int4=True)["transducer"]
    assert meta["int4_matrices"] == 3
    ops = {node.op_type for node in onnx.load(str(tmp_path / "transducer_join.int4.onnx")).graph.node}
    assert "MatMulNBits" in ops and "Gemm" not in ops
    onnx_runner = OnnxTransducerRunner(tmp_path, ".int4.onnx", 1, meta)
    torch_runner = head.runner()
    frames = torch.randn(6, 32).numpy()
    contexts = np.array([[0, 0], [0, 3], [5, 2]], dtype=np.int64)
    projected = onnx_runner.project(frames)
    np.testing.assert_allclose(projected, torch_runner.project(frames), atol=0.05)
    predicted = onnx_runner.predict(contexts)
    np.testing.assert_allclose(predicted, torch_runner.predict(contexts), atol=0.05)
    joint = onnx_runner.join(projected[0], predicted)
    expected = torch_runner.join(torch_runner.project(frames)[0], torch_runner.predict(contexts))
    np.testing.assert_allclose(joint, expected, atol=0.1)
    assert (joint.argmax(-1) == expected.argmax(-1)).all()
    float_head = TransducerHead(TransducerConfig(vocab_size=8, encoder_dim=32, predictor_dim=32, joint_dim=32)).eval()
    (tmp_path / "float").mkdir()
    assert export_transducer(float_head, tmp_path / "float", int8=True, int4=True)["transducer"]["int4_matrices"] == 0
    assert not list((tmp_path / "float").glob("*.int4.onnx"))
