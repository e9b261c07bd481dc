"""Every notebook in notebooks/ runs top to bottom under a real Jupyter kernel, and is stored
executed (the docs render the stored outputs; they never run the notebooks)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ROOT = Path(__file__).resolve().parents[1]


def test_notebooks_exist():
    assert NOTEBOOKS, "no notebooks found"
    assert NOTEBOOKS[0].name.startswith("01_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_executed(path):
    """Every code cell ran, in order, without an error, and shows what it produced."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cells"
    counts = [c.execution_count for c in code]
    assert None not in counts, f"{path.name}: cells {counts.index(None)}+ were never run"
    assert counts == sorted(counts), f"{path.name}: cells run out of order ({counts})"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} is stored with an error: {errors[0].ename}"
    assert sum(bool(c.outputs) for c in code) >= len(code) // 2, f"{path.name}: outputs missing"


@pytest.mark.slow  # end to end (minutes on 2 cores): CI runs it, the dev loop does not
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_under_a_kernel(path, tmp_path):
    """Run a copy top to bottom with nbclient and the ipykernel of this interpreter."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    nb = nbformat.read(copy, as_version=4)
    env = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel is a subprocess and inherits this environment
    try:
        client = nbclient.NotebookClient(
            nb,
            timeout=600,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},  # its working directory
        )
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # nbclient raises CellExecutionError on the first failing cell; every cell ran:
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
