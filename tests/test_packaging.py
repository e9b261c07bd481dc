"""The package people adopt: license text and metadata, one version, citation, the built wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import ttdecomp

ROOT = Path(__file__).resolve().parents[1]

#: sha256 of the Apache License 2.0 as apache.org publishes it (LICENSE-2.0.txt, with the
#: appendix): the file must be the unmodified text.
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_the_unmodified_apache_2_text():
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256
    assert b"APPENDIX: How to apply the Apache License to your work." in text


def test_pyproject_declares_the_license_in_spdx_form_with_its_file():
    data = _pyproject()
    project = data["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    # license classifiers and the SPDX expression exclude each other (PEP 639)
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # the SPDX string and license-files need setuptools 77
    setuptools_req = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools_req == ["setuptools>=77"]


def test_pyproject_has_the_metadata_of_an_adoptable_package():
    project = _pyproject()["project"]
    assert project["authors"] == [{"name": "ttdecomp developers"}]
    assert {"tensor-train", "TT-LoRA", "LoRETTA"} <= set(project["keywords"])
    assert "Programming Language :: Python :: 3.10" in project["classifiers"]
    assert "Typing :: Typed" in project["classifiers"]
    urls = project["urls"]
    assert {"Homepage", "Documentation", "Repository", "Issues", "Changelog"} <= set(urls)
    assert urls["TT-LoRA paper"].endswith("2408.01008")
    assert urls["LoRETTA paper"].endswith("2402.11417")
    for name in ("CHANGELOG.md", "CONTRIBUTING.md", "CITATION.cff"):
        assert (ROOT / name).is_file(), name


def test_the_version_is_written_once():
    """pyproject.toml holds it; the package reads it from the installed metadata."""
    version = _pyproject()["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([abrc.]+\d+)?(\.dev\d+)?", version)
    for path in (ROOT / "ttdecomp").rglob("*.py"):
        # no assignment or mapping entry holds the version (a docstring may quote it)
        pattern = rf"[=:(,]\s*['\"]{re.escape(version)}['\"]"
        assert not re.search(pattern, path.read_text()), path
    assert not re.search(r"^version:", (ROOT / "CITATION.cff").read_text(), re.M)
    try:
        installed = metadata.version("ttdecomp")
    except metadata.PackageNotFoundError:
        pytest.skip("ttdecomp is not installed here: __version__ is the fallback")
    assert ttdecomp.__version__ == installed


def test_the_version_falls_back_only_when_the_package_is_not_installed():
    code = (
        "from importlib import metadata\n"
        "def missing(name):\n"
        "    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = missing\n"
        "import ttdecomp\n"
        "print(ttdecomp.__version__)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0+unknown"


def test_citation_cff_validates():
    if importlib.util.find_spec("cffconvert") is None or shutil.which("cffconvert") is None:
        pytest.skip("cffconvert is not installed (pip install cffconvert)")
    out = subprocess.run(
        ["cffconvert", "--validate", "-i", str(ROOT / "CITATION.cff")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "CITATION.cff").read_text()
    assert "2408.01008" in text and "2402.11417" in text  # TT-LoRA and LoRETTA


def test_the_wheel_holds_the_license_and_builds_without_a_license_warning(tmp_path):
    """Built from a copy of the sources (the checkout is left untouched), without isolation
    so that no package index is needed; the build prints no license deprecation warning."""
    pytest.importorskip("build")
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 cannot build the SPDX license")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "ttdecomp", src / "ttdecomp", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", "dist"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert not re.search(r"licen[sc]e.*deprecat|deprecat.*licen[sc]e", log, re.I | re.S), log
    (wheel,) = (src / "dist").glob("ttdecomp-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (lic,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(lic) == (ROOT / "LICENSE").read_bytes()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in meta
    assert "License-File: LICENSE" in meta
    assert f"Version: {_pyproject()['project']['version']}" in meta
    # and installing it says nothing about the license either
    target = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target"]
        + [str(target), "--disable-pip-version-check", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert not re.search(r"licen[sc]e", pip.stdout + pip.stderr, re.I), pip.stdout + pip.stderr
    assert (target / "ttdecomp" / "__init__.py").is_file()
