"""`edgeasr eval` and `edgeasr transcribe` as a user calls them."""

import json

from edgeasr.cli import main
from edgeasr.data.manifest import read_manifest
from edgeasr.evaluate.metrics import char_errors, word_errors


def test_eval_json_is_exactly_one_object_with_the_promised_keys(tiny_model, tiny_corpus, tmp_path, capsys):
    errors = tmp_path / "errors.jsonl"
    status = main(["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
                   "--mode", "ctc_prefix_beam", "--chunk-size", "4", "--json", "--errors", str(errors)])
    assert status == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert {"wer", "cer", "rtf", "utts", "audio_seconds"} <= set(summary)
    utts = read_manifest(tiny_corpus / "test.jsonl")
    assert summary["utts"] == len(utts)
    assert abs(summary["audio_seconds"] - sum(u.duration for u in utts)) < 0.1
    assert summary["rtf"] > 0
    rows = [json.loads(line) for line in errors.read_text().splitlines()]
    assert len(rows) == len(utts)
    # The summary is the pooled per-utterance counts.
    assert sum(r["errors"] for r in rows) == summary["substitutions"] + summary["deletions"] + summary["insertions"]


def test_eval_text_output_and_offline_mode(tiny_model, tiny_corpus, capsys):
    assert main(["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
                 "--mode", "ctc_greedy", "--offline"]) == 0
    text = capsys.readouterr().out
    assert "WER" in text and "CER" in text and "RTF" in text


def test_transcribe_json_lines(tiny_model, tiny_corpus, capsys):
    utts = read_manifest(tiny_corpus / "test.jsonl")[:2]
    assert main(["transcribe", "--model", str(tiny_model), "--json", "--mode", "ctc_greedy",
                 *[u.audio for u in utts]]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, utt in zip(lines, utts):
        record = json.loads(line)
        assert record["audio"] == utt.audio and "text" in record and "words" in record


def test_transcribe_keeps_going_after_a_bad_file(tiny_model, tiny_corpus, tmp_path, capsys):
    good = read_manifest(tiny_corpus / "test.jsonl")[0].audio
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    assert main(["transcribe", "--model", str(tiny_model), "--mode", "ctc_greedy", str(bad), good]) == 2
    captured = capsys.readouterr()
    assert str(bad) in captured.err and captured.err.count("\n") == 1
    assert good in captured.out


def test_metrics_normalize_before_scoring():
    assert word_errors("Dr. Smith paid $5.", "doctor smith paid five dollars").errors == 0
    counts = word_errors("the cat sat", "the cat sat down")
    assert (counts.insertions, counts.rate) == (1, 100 / 3)
    assert char_errors("abc", "abd").substitutions == 1


def test_batched_offline_eval_matches_unbatched(tiny_model, tiny_corpus, capsys):
    base = ["eval", "--model", str(tiny_model), "--manifest", str(tiny_corpus / "test.jsonl"),
            "--mode", "ctc_prefix_beam", "--offline", "--json"]
    assert main(base) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*base, "--batch-size", "3"]) == 0
    three = json.loads(capsys.readouterr().out)
    assert three["batch_size"] == 3
    assert (one["wer"], one["cer"], one["words"]) == (three["wer"], three["cer"], three["words"])


def test_the_readme_eval_example_runs_on_a_fresh_clone(capsys):
    """`edgeasr eval --model default --manifest samples/samples.jsonl`, as the README writes it:
    the bundled manifest has no durations (they come from the audio headers)."""
    assert all("duration" not in json.loads(line) for line in open("samples/samples.jsonl"))
    assert main(["eval", "--model", "default", "--manifest", "samples/samples.jsonl", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["utts"] == 3 and report["words"] == 38 and report["wer"] <= 15.0, report
