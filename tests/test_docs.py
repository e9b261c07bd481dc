"""The API reference lists every public name, and the docs build."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import ttdecomp

ROOT = Path(__file__).resolve().parents[1]
API = (ROOT / "docs" / "api.rst").read_text()


def listed(module_prefix: str) -> set[str]:
    names = set()
    current = None
    for line in API.splitlines():
        m = re.match(r"\.\. currentmodule:: (\S+)", line)
        if m:
            current = m.group(1)
        elif current == module_prefix and re.match(r"^   [A-Za-z_][\w.]*$", line):
            names.add(line.strip())
    return names


def test_every_core_name_is_documented():
    skip = {"__version__", "errors", "counts", "shapes"}  # modules listed by dotted name
    missing = set(ttdecomp.__all__) - listed("ttdecomp") - skip
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_every_adapter_name_is_documented():
    adapters = pytest.importorskip("ttdecomp.adapters")
    missing = set(adapters.__all__) - listed("ttdecomp.adapters")
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_every_finetune_name_is_documented():
    finetune = pytest.importorskip("ttdecomp.finetune")
    missing = set(finetune.__all__) - listed("ttdecomp.finetune")
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_sphinx_builds(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-b", "html", "-q", str(ROOT / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "index.html").exists()
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors[:20])
