"""``ttdecomp finetune`` on a tiny model: bad input, resume, interrupt, reload, two processes.

The tiny BERT (random weights, no dropout) and the toy CSV come from
:mod:`ttdecomp.finetune.testing`, so these tests need no packaged asset; the learning itself is
tested on the real MiniLM and tweets in ``test_finetune_e2e.py``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from ttdecomp.cli import main  # noqa: E402
from ttdecomp.finetune import FinetuneConfig, load_finetuned, load_results  # noqa: E402

SMALL = [
    "--train-size",
    "40",
    "--val-size",
    "20",
    "--test-size",
    "20",
    "--batch-size",
    "8",
    "--max-length",
    "12",
    "--no-progress",
    "--no-figures",
    # one run at a time: a run of the tiny model takes less than a fresh interpreter's start
    # (test_parallel_runs_equal_sequential_ones covers --jobs 2)
    "--jobs",
    "1",
]


@pytest.fixture(scope="module")
def assets(tiny_classifier, toy_csv):
    return tiny_classifier, toy_csv


def args(assets, out, *extra):
    model, data = assets
    return [
        "finetune",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
        *SMALL,
        *extra,
    ]


def fails(argv, capsys, message):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err, err
    return err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "tt-lora,dora"], "unknown method 'dora'"),
        (["--rank", "0"], "rank 0 is out of range"),
        (["--lr", "2"], "learning rate 2.0 is out of range"),
        (["--lr", "lora=-1e-3"], "learning rate -0.001 is out of range"),
        (["--epochs", "0"], "--epochs must be an integer in [1, 1000]; got 0."),
        (["--targets", "query,nonexistent_proj"], "nonexistent_proj"),
        (["--seeds", "0,0"], "lists a seed twice"),
        (["--tt-shape", "4,4,4,4", "--methods", "tt-lora"], "--tt-shape [4, 4, 4, 4]"),
        (["--tt-shape", ",".join(["2"] * 50_000)], "has 50000 factors; at most 64"),
        (["--batch-size", "0"], "--batch-size must be an integer in [1, 65536]; got 0."),
        (["--lr", "head-only=1e-2"], "not among the methods run"),
        # more tokens than the model's 128 positions: refused before training, not mid-way
        (["--max-length", "4096"], "max-length 4096 is more tokens than"),
    ],
)
def test_bad_options_fail_before_training(assets, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    fails(args(assets, out, *extra), capsys, message)
    assert not out.exists()  # nothing written


def test_unknown_model_and_data_list_the_known_ones(assets, tmp_path, capsys):
    out = tmp_path / "out"
    err = fails(["finetune", "--model", "gpt-17", "--output", str(out)], capsys, "gpt-17")
    assert "minilm" in err and "smollm2" in err
    err = fails(
        ["finetune", "--model", str(assets[0]), "--data", "imdb", "--output", str(out)],
        capsys,
        "imdb",
    )
    assert "tweets" in err
    assert not out.exists()


def test_bad_data_files_fail_before_training(assets, tmp_path, capsys):
    model = str(assets[0])
    cases = {
        "cols.csv": ("sentence,label\n" + "a,1\nb,0\n" * 50, "columns 'text' and 'label'"),
        "one.csv": ("text,label\n" + "".join(f"t{i},pos\n" for i in range(100)), "only one class"),
        "float.csv": (
            "text,label\n" + "".join(f"t{i},0.{i}\n" for i in range(1, 99)),
            "fractional",
        ),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        out = tmp_path / f"out-{name}"
        fails(
            ["finetune", "--model", model, "--data", str(path), "--output", str(out), *SMALL],
            capsys,
            message,
        )
        assert not out.exists()
    empty = tmp_path / "split.csv"
    rows = [f"t{i},{i % 2},test" for i in range(30)] + [
        f"v{i},{i % 2},validation" for i in range(8)
    ]
    empty.write_text("text,label,split\n" + "\n".join(rows) + "\n")
    fails(
        [
            "finetune",
            "--model",
            model,
            "--data",
            str(empty),
            "--output",
            str(tmp_path / "e"),
            *SMALL,
        ],
        capsys,
        "but no train split",
    )


def test_run_writes_results_reloads_and_refuses_to_overwrite(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(args(assets, out, "--methods", "tt-lora,lora,head-only", "--max-steps", "3")) == 0
    table = capsys.readouterr().out
    for method in ("tt-lora", "lora", "head-only"):
        assert method in table
    results = load_results(out)
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [
        ("tt-lora", 0),
        ("lora", 0),
        ("head-only", 0),
    ]
    assert results["complete"] is True
    assert set(results["versions"]) >= {"torch", "transformers", "peft", "ttdecomp"}
    assert results["config"]["settings"]["tt-lora"]["lr"] == 1e-2
    assert results["data"]["sizes"] == {"train": 40, "validation": 20, "test": 20}
    for row in results["rows"]:
        assert row["steps"] == 3 and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["extra_params"] == 2 * 32 + 2  # the classifier head, counted apart
    tt, lora = results["rows"][0], results["rows"][1]
    assert lora["adapter_params"] == 2 * 2 * 8 * (32 + 32)  # 2 layers x q,v x r(in+out)
    assert 0 < tt["adapter_params"] < lora["adapter_params"]
    summary = {s["method"]: s for s in results["summary"]}
    assert summary["tt-lora"]["lora_fraction"] == tt["adapter_params"] / lora["adapter_params"]

    # every saved adapter reloads onto a fresh base model to the run's own test logits
    from safetensors.numpy import load_file
    from transformers import DataCollatorWithPadding

    from ttdecomp.finetune.data import load_classification
    from ttdecomp.finetune.tasks.classification import TextDataset, predict_logits

    splits = load_classification(assets[1], sizes=(40, 20, 20))
    for row in results["rows"]:
        model, tokenizer = load_finetuned(out, row["method"], 0, model=assets[0])
        logits = predict_logits(
            model, TextDataset(splits.test, tokenizer, 12), DataCollatorWithPadding(tokenizer)
        )
        saved = load_file(str(out / row["run_dir"] / "test_logits.safetensors"))["logits"]
        np.testing.assert_allclose(logits, saved, rtol=0, atol=1e-5)

    before = (out / "results.json").read_bytes()
    fails(args(assets, out, "--methods", "lora"), capsys, "exists and is not empty")
    assert (out / "results.json").read_bytes() == before
    fails(
        args(assets, out, "--methods", "lora", "--resume", "--max-steps", "4"),
        capsys,
        "another configuration",
    )
    assert (out / "results.json").read_bytes() == before
    # resuming with other methods and seeds adds rows and keeps every finished one
    more = args(assets, out, "--methods", "lora", "--seeds", "0,1", "--max-steps", "3", "--resume")
    assert main(more) == 0
    rows = load_results(out)["rows"]
    assert rows[:3] == results["rows"] and (rows[3]["method"], rows[3]["seed"]) == ("lora", 1)
    assert main(args(assets, out, "--methods", "lora", "--max-steps", "3", "--overwrite")) == 0
    assert [r["method"] for r in load_results(out)["rows"]] == ["lora"]


@pytest.mark.parametrize("jobs", ["1", "2"])
@pytest.mark.slow
def test_interrupt_keeps_finished_rows_and_resume_finishes(assets, tmp_path, jobs):
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "ttdecomp",
        *args(
            assets,
            out,
            "--methods",
            "lora,tt-lora",
            "--seeds",
            "0,1",
            "--max-steps",
            "40",
            "--threads",
            "1",
            "--jobs",  # the last one given wins over SMALL's
            jobs,
        ),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "results.json").exists() and load_results(out)["rows"]:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)  # Ctrl-C during the second run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err
    kept = load_results(out)
    assert "complete" not in kept
    # stopped at once, or (when Python dropped the KeyboardInterrupt inside a finalizer) after
    # finishing the run in progress: never later, never losing a finished row
    assert 1 <= len(kept["rows"]) <= 2
    first = kept["rows"][0]
    # one run at a time finishes the plan's first run first; two at a time, either of the two
    firsts = [("lora", 0)] if jobs == "1" else [("lora", 0), ("tt-lora", 0)]
    assert (first["method"], first["seed"]) in firsts
    assert (out / first["run_dir"] / "adapter").is_dir()

    done = subprocess.run([*argv, "--resume"], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    assert f"{len(kept['rows'])} finished run(s) kept" in done.stderr.decode()
    final = load_results(out)
    assert final["complete"] is True
    assert sorted((r["method"], r["seed"]) for r in final["rows"]) == [
        ("lora", 0),
        ("lora", 1),
        ("tt-lora", 0),
        ("tt-lora", 1),
    ]
    assert final["rows"][0] == first  # the finished row was kept, not redone


@pytest.mark.slow
def test_parallel_runs_equal_sequential_ones(assets, tmp_path, capsys):
    """--jobs 2 (a process per run) gives the rows and test logits of --jobs 1, bit for bit."""
    from safetensors.numpy import load_file

    outs = {}
    for jobs in ("1", "2"):
        outs[jobs] = tmp_path / f"jobs{jobs}"
        argv = args(assets, outs[jobs], "--methods", "lora,tt-lora", "--seeds", "0,1")
        assert main([*argv, "--max-steps", "4", "--threads", "1", "--jobs", jobs]) == 0
    err = capsys.readouterr().err
    assert "4 runs, 2 at a time (1 torch thread(s) each)" in err
    one, two = (load_results(outs[j])["rows"] for j in ("1", "2"))
    assert [(r["method"], r["seed"]) for r in two] == [
        ("lora", 0), ("tt-lora", 0), ("lora", 1), ("tt-lora", 1)
    ]  # fmt: skip
    keys = ("method", "seed", "val_accuracy", "test_accuracy", "history", "adapter_params")
    assert [{k: r[k] for k in keys} for r in one] == [{k: r[k] for k in keys} for r in two]
    for row in one:
        a = load_file(str(outs["1"] / row["run_dir"] / "test_logits.safetensors"))["logits"]
        b = load_file(str(outs["2"] / row["run_dir"] / "test_logits.safetensors"))["logits"]
        np.testing.assert_array_equal(a, b)
        assert not list((outs["2"] / row["run_dir"]).glob(".run_*"))  # hand-over files gone


def test_plan_jobs_shares_the_cores():
    from ttdecomp.errors import InvalidInputError
    from ttdecomp.finetune.parallel import plan_jobs

    assert plan_jobs(2, cores=2) == (2, 1)  # the default on 2 cores: side by side
    assert plan_jobs(2, cores=8) == (2, 4)
    assert plan_jobs(2, jobs=1, cores=2, threads=1) == (1, 1)
    assert plan_jobs(2, jobs=1, cores=2) == (1, None)
    assert plan_jobs(1, cores=8) == (1, None)  # one run: nothing to put side by side
    assert plan_jobs(2, cores=1) == (1, None)
    assert plan_jobs(4, cores=8, device="cuda") == (1, None)
    assert plan_jobs(4, cores=8, world_size=2) == (1, None)  # under torchrun: one at a time
    assert plan_jobs(2, jobs=2, cores=2) == (2, 1)
    assert plan_jobs(5, jobs=8, cores=8) == (5, 1)  # never more processes than runs
    assert plan_jobs(1, jobs=4, cores=8) == (1, None)  # one run keeps torch's own threads
    assert plan_jobs(4, jobs=2, cores=8, threads=4) == (2, 4)
    assert plan_jobs(2, jobs=4, cores=8) == (2, 4)
    with pytest.raises(InvalidInputError, match="drop --jobs under torchrun"):
        plan_jobs(4, jobs=2, world_size=2)
    with pytest.raises(InvalidInputError, match="--jobs must be >= 1; got 0"):
        plan_jobs(4, jobs=0)


@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(assets, tmp_path):
    """torchrun / accelerate launch, 2 processes (gloo, CPU), same global batch: same adapter."""
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = args(
        assets,
        tmp_path / "x",
        "--methods",
        "tt-lora,lora",
        "--max-steps",
        "4",
        "--lr",
        "1e-2",
        "--threads",
        "1",
    )
    launchers = {
        1: ["-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29601"],
        2: ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29602"],
    }
    if importlib.util.find_spec("accelerate") is not None:
        # accelerate's torch.distributed launcher (on a CPU, --multi_gpu is its name for it)
        launchers["accelerate"] = [
            "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", "29603",
        ]  # fmt: skip
    outputs = {}
    for procs, launcher in launchers.items():
        out = tmp_path / f"p{procs}"
        argv = [a if a != str(tmp_path / "x") else str(out) for a in common]
        command = [sys.executable, *launcher, "-m", "ttdecomp", *argv]
        run = subprocess.run(command, env=env, capture_output=True, timeout=600)
        assert run.returncode == 0, run.stderr.decode()[-3000:]
        outputs[procs] = out
    for method, name in (
        ("tt-lora", "ttdecomp_adapter.safetensors"),
        ("lora", "adapter_model.safetensors"),
    ):
        one = load_file(str(outputs[1] / "runs" / f"{method}-seed0" / "adapter" / name))
        rows1 = load_results(outputs[1])["rows"]
        loss1 = next(r for r in rows1 if r["method"] == method)["history"][-1]["train_loss"]
        for procs in [p for p in outputs if p != 1]:
            two = load_file(str(outputs[procs] / "runs" / f"{method}-seed0" / "adapter" / name))
            assert one.keys() == two.keys(), procs
            for key in one:
                torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
            rows2 = load_results(outputs[procs])["rows"]
            loss2 = next(r for r in rows2 if r["method"] == method)["history"][-1]["train_loss"]
            assert loss2 == pytest.approx(loss1, rel=1e-5)  # the mean loss, not a sum over ranks
    assert json.loads((outputs[2] / "results.json").read_text())["complete"] is True


def test_python_api_matches_the_command(assets, tmp_path):
    from ttdecomp.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        model=str(assets[0]),
        data=str(assets[1]),
        methods=["lora"],
        sizes=(40, 20, 20),
        batch_size=8,
        max_length=12,
        max_steps=2,
    )
    result = finetune(config, output=tmp_path / "api", progress=False, figures=False)
    assert [r["method"] for r in result.rows] == ["lora"]
    assert "lora" in result.table and Path(result.output, "results.json").is_file()
    with pytest.raises(TypeError):
        FinetuneConfig(learning_rate=1e-3)  # an unknown keyword is an error


def test_run_record_banner_log_loss_figure_and_config_file(assets, tmp_path, capsys, monkeypatch):
    # CUDA and MPS absent (the test's setting): --device auto says cpu in the banner
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    config = tmp_path / "run.yaml"
    config.write_text("methods: [tt-lora, lora]\nmax-steps: 4\nrank: {lora: 2}\nfigures: true\n")
    out = tmp_path / "run"
    argv = [*args(assets, out, "--config", str(config)), "--figures", "--eval-every", "2"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "device cpu, dtype fp32" in err
    assert "data " in err and "40 train / 20 validation / 20 test examples" in err
    assert "training: 4 steps per run, global batch 8" in err
    results = load_results(out)
    tt, lora = results["rows"]
    assert f"tt-lora {tt['adapter_params']:,} adapter + 66 other" in err  # as trained
    assert f"lora {lora['adapter_params']:,} adapter" in err
    assert lora["adapter_params"] == 2 * 2 * 2 * (32 + 32)  # rank 2 from the file
    options = results["config"]["options"]
    assert options["methods"] == ["tt-lora", "lora"] and options["rank"] == {"lora": 2}
    assert options["max_steps"] == 4 and options["batch_size"] == 8  # the flag's
    assert options["device"] == "auto" and results["config"]["device"] == "cpu"
    assert FinetuneConfig(**options).to_dict() == options  # the record rebuilds the config
    for row in results["rows"]:
        log = [json.loads(line) for line in (out / row["train_log"]).read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3, 4]
        assert all(r["loss"] > 0 and r["learning_rate"] == row["settings"]["lr"] for r in log)
        assert all(r["step_seconds"] > 0 for r in log)
        # a history entry's train_loss is the mean loss of the steps since the last evaluation
        for entry, pair in zip(row["history"], (log[:2], log[2:])):
            assert entry["train_loss"] == pytest.approx(sum(r["loss"] for r in pair) / 2)
    assert (out / "loss_curves.png").stat().st_size > 0


def test_gradient_checkpointing_trains_the_same_weights(assets, tmp_path):
    rows = []
    for flag in ("--no-gradient-checkpointing", "--gradient-checkpointing"):
        out = tmp_path / flag
        assert main(args(assets, out, "--methods", "tt-lora", "--max-steps", "3", flag)) == 0
        rows.append(load_results(out)["rows"][0])
    plain, checkpointed = rows
    # the same training, with fewer activations kept for the backward pass
    assert checkpointed["peak_step_bytes"] < plain["peak_step_bytes"]
    (a,), (b,) = plain["history"], checkpointed["history"]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
