"""The `edgeasr` command as a user meets it: help everywhere, one-line errors, the demo."""

import subprocess
import sys

import pytest

from edgeasr.cli import COMMAND_MODULES, build_parser, main


def all_command_paths():
    parser = build_parser()
    paths = []
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            paths.append([name])
            for sub_action in getattr(sub, "_subparsers", None)._group_actions if sub._subparsers else []:
                paths.extend([name, child] for child in sub_action.choices)
    return paths


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    assert "usage: edgeasr" in capsys.readouterr().out


def test_every_registered_module_shows_up():
    paths = {p[0] for p in all_command_paths()}
    assert {"demo", "corpus", "train", "transcribe", "eval", "features", "audio", "data", "tokenizer"} <= paths
    assert len(COMMAND_MODULES) == len(paths)


def test_group_without_action_prints_its_help(capsys):
    assert main(["corpus"]) == 2
    assert "synth" in capsys.readouterr().err


def test_console_entry_point_reports_bad_input_in_one_line(tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    done = subprocess.run([sys.executable, "-m", "edgeasr", "features", str(bogus)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(bogus) in done.stderr


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert main(["transcribe", "--model", str(tmp_path / "nothing"), str(tmp_path / "a.wav")]) == 2
    assert "model directory not found" in capsys.readouterr().err


def test_features_demo_builds_a_corpus_and_shows_identical_streaming_frames(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--features", "--out", str(out), "--seconds", "8", "--engines", "espeak,flite"]) == 0
    text = capsys.readouterr().out
    assert (out / "card.json").exists() and (out / "train.jsonl").exists()
    assert "identical" in text and "DIFFERENT" not in text
    assert "80" in text
