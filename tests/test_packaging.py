"""A wheel built from the repository is what a user installs: it must carry the default model
(so ``load_model("default")`` works outside the repository), the licence files, and run."""

import ast
import importlib.metadata
import re
import subprocess
import sys
import sysconfig
import tomllib
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
    # the compiled search core (edgeasr/_native.c), built into the wheel
    assert any(n.startswith("edgeasr/_native.") and n.endswith(".so") for n in names)


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    """(core dependencies, optional extras) of pyproject.toml, as normalised distribution names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(spec) for spec in project["dependencies"]}
    extras = {_requirement_name(spec) for group in project["optional-dependencies"].values() for spec in group}
    return core, extras


def test_every_third_party_module_the_package_imports_is_a_declared_dependency():
    """A missing line in pyproject.toml passes on this machine (everything is installed here) and
    breaks a user's ``pip install .``: every import of edgeasr's code must name a declared
    distribution; one from an optional extra only inside a function (imported when used)."""
    core, extras = _declared()
    distributions = importlib.metadata.packages_distributions()
    missing, eager_extras = [], []
    for path in sorted((ROOT / "edgeasr").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                module = name.split(".")[0]
                if module in sys.stdlib_module_names or module in ("edgeasr", "__future__"):
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
                where = f"{path.relative_to(ROOT)}:{node.lineno} imports {module}"
                if not dists & (core | extras):
                    missing.append(where)
                elif not dists & core and id(node) in top_level:
                    eager_extras.append(where)
    assert not missing, f"undeclared dependencies: {missing}"
    assert not eager_extras, f"optional dependencies imported at module level: {eager_extras}"


def test_an_installed_wheel_transcribes_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    # The dependencies (torch & co.) come from this environment's site-packages, added as a
    # plain path: its .pth files, among them the editable install of the repository, stay out.
    site = Path(sysconfig.get_paths()["purelib"])
    (next((venv / "lib").glob("python3*")) / "site-packages" / "deps.pth").write_text(f"{site}\n")
    # A new venv's own older setuptools would shadow the one torch requires
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], capture_output=True, timeout=300)
    # A real install, dependencies resolved: with no index, pip must find every requirement of
    # the wheel's metadata (names and versions) already satisfied, or it fails.
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    check = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert "edgeasr" not in check.stdout, check.stdout[-2000:]
    clip = ROOT / "samples" / "kokoro-female.wav"
    script = ("import edgeasr, pathlib, edgeasr._native as native; from edgeasr.model.package import DEFAULT_MODEL_DIR as d; "
              f"assert pathlib.Path(edgeasr.__file__).is_relative_to({str(venv)!r}), edgeasr.__file__; "
              f"assert pathlib.Path(native.__file__).is_relative_to({str(venv)!r}), native.__file__; "
              f"assert d.is_relative_to({str(venv)!r}), d; "
              f"print(edgeasr.load_model('default').transcribe({str(clip)!r}).text)")
    run = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "charges" in run.stdout  # "they submitted their charges at the end of each month"
    cli = subprocess.run([str(venv / "bin" / "edgeasr"), "transcribe", str(clip), "-f", "srt"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert cli.returncode == 0 and "-->" in cli.stdout, cli.stderr[-2000:]
