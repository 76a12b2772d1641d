"""A wheel built from the repository is what a user installs: it must carry the default model
(so ``load_model("default")`` works outside the repository), the licence files, and run."""

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # no build isolation: setuptools is already here (and an isolated build would download it)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (path,) = out.glob("edgeasr-*.whl")
    return path


def test_the_wheel_carries_the_default_model_and_the_licences(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    model = "edgeasr/models/default/"
    for part in ("config.yaml", "model.pt", "README.md", "tokenizer/units.txt", "lm/lm.arpa.gz"):
        assert model + part in names, f"{part} missing from the wheel"
    licences = {Path(n).name for n in names if ".dist-info/" in n}
    assert {"LICENSE", "NOTICE"} <= licences


def test_an_installed_wheel_transcribes_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    # The dependencies (torch & co.) come from this environment's site-packages, added as a
    # plain path: its .pth files, among them the editable install of the repository, stay out.
    site = Path(sysconfig.get_paths()["purelib"])
    (next((venv / "lib").glob("python3*")) / "site-packages" / "deps.pth").write_text(f"{site}\n")
    clip = ROOT / "samples" / "kokoro-female.wav"
    script = ("import edgeasr, pathlib; from edgeasr.model.package import DEFAULT_MODEL_DIR as d; "
              f"assert pathlib.Path(edgeasr.__file__).is_relative_to({str(venv)!r}), edgeasr.__file__; "
              f"assert d.is_relative_to({str(venv)!r}), d; "
              f"print(edgeasr.load_model('default').transcribe({str(clip)!r}).text)")
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "charges" in run.stdout  # "they submitted their charges at the end of each month"
    cli = subprocess.run([str(venv / "bin" / "edgeasr"), "transcribe", str(clip), "-f", "srt"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert cli.returncode == 0 and "-->" in cli.stdout, cli.stderr[-2000:]
