"""``ttdecomp.runs``: the output folder and the one process pool of finetune and search.

The pool is tested with a three-line worker module of the test's own (fast); the finetune
tests use the tiny classifier and toy CSV of :mod:`ttdecomp.finetune.testing`.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ttdecomp.errors import InvalidInputError
from ttdecomp.runs import OutputFolder, WorkerPool, check_output, describe_exit

PACKAGE = Path(__file__).resolve().parents[1] / "ttdecomp"


# ----------------------------------------------------------------------------- output folder
def test_an_output_that_cannot_be_created_fails_naming_it_and_leaves_nothing(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(InvalidInputError, match=r"file/run cannot be created: .* is a file"):
        check_output(file / "run")
    check_output(tmp_path / "a" / "b" / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe left nothing


def test_a_read_only_output_fails_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root writes anywhere: a read-only file system then
            folder = Path("/sys/ttdecomp-out")
            try:
                folder.mkdir()
            except OSError:
                pass
            else:
                folder.rmdir()
                pytest.skip("no read-only folder to try here")
        with pytest.raises(InvalidInputError, match=f"{folder} cannot be written"):
            check_output(folder / "run" if folder.name == "ro" else folder)
    finally:
        (tmp_path / "ro").chmod(0o755)


def _previous_run(out: Path, files: list[str]) -> None:
    out.mkdir(parents=True)
    (out / "runs" / "lora-seed0" / "adapter").mkdir(parents=True)
    (out / "runs" / "lora-seed0" / "adapter" / "w.bin").write_text("w")
    (out / "results.json").write_text(json.dumps({"rows": [], "files": files}))


def test_overwrite_deletes_only_what_the_previous_run_recorded(tmp_path):
    out = tmp_path / "out"
    _previous_run(out, ["results.json", "runs/", "runs/lora-seed0/"])
    (out / "runs" / "Dec07_tensorboard").mkdir()  # TensorBoard's default folder is runs/ too
    (out / "runs" / "Dec07_tensorboard" / "events.out").write_text("log")
    (out / "notes.txt").write_text("mine")
    folder = OutputFolder(out, "results.json")
    folder.prepare(resume=False, overwrite=True)
    assert sorted(folder.clear_previous()) == ["results.json", "runs/lora-seed0"]
    assert (out / "runs" / "Dec07_tensorboard" / "events.out").read_text() == "log"
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "results.json").exists() and not (out / "runs" / "lora-seed0").exists()


def test_set_aside_previous_then_restore_or_drop_keeps_what_is_not_recorded(tmp_path):
    def previous_run(root):
        (root / "runs" / "a").mkdir(parents=True)
        (root / "runs" / "a" / "w.bin").write_text("old")
        (root / "runs" / "tensorboard.log").write_text("the user's")  # not recorded
        (root / "results.json").write_text(
            json.dumps({"files": ["results.json", "runs/", "runs/a/"]})
        )
        folder = OutputFolder(root, "results.json")
        folder.prepare(resume=False, overwrite=True)
        return folder

    root = tmp_path / "restore"
    folder = previous_run(root)
    folder.set_aside_previous()
    assert not (root / "results.json").exists() and not (root / "runs" / "a").exists()
    assert (root / "runs" / "tensorboard.log").read_text() == "the user's"
    folder.claim("results.json").write_text("new, failed")  # what the new run wrote
    folder.mkdir("runs/b")
    folder.restore_previous()
    assert json.loads((root / "results.json").read_text())["files"][0] == "results.json"
    assert (root / "runs" / "a" / "w.bin").read_text() == "old"
    assert not (root / "runs" / "b").exists()
    assert sorted(p.name for p in root.iterdir()) == ["results.json", "runs"]

    root = tmp_path / "drop"
    folder = previous_run(root)
    folder.set_aside_previous()
    assert sorted(folder.drop_previous()) == ["results.json", "runs/a"]
    assert sorted(p.name for p in root.iterdir()) == ["runs"]  # the user's log keeps runs/
    assert [p.name for p in (root / "runs").iterdir()] == ["tensorboard.log"]


def test_overwrite_refuses_a_folder_without_results_and_paths_outside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(InvalidInputError, match=r"holds no results\.json"):
        OutputFolder(out, "results.json").prepare(resume=False, overwrite=True)
    (tmp_path / "victim").write_text("precious")
    (out / "results.json").write_text(json.dumps({"rows": [], "files": ["../victim"]}))
    with pytest.raises(InvalidInputError, match="never deletes outside the run folder"):
        OutputFolder(out, "results.json").prepare(resume=False, overwrite=True)
    assert (tmp_path / "victim").read_text() == "precious"
    assert (out / "thesis.tex").exists()


def test_a_foreign_folder_at_a_planned_path_is_refused(tmp_path):
    out = tmp_path / "out"
    _previous_run(out, ["results.json"])  # runs/lora-seed0 not recorded
    folder = OutputFolder(out, "results.json")
    folder.prepare(resume=True, overwrite=False)
    with pytest.raises(InvalidInputError, match="no ttdecomp run recorded it"):
        folder.claim("runs/lora-seed0/")
    assert (out / "runs" / "lora-seed0" / "adapter" / "w.bin").exists()


# ----------------------------------------------------------------------------- the pool
WORKER = """\
import os, sys, time
from ttdecomp.runs import read_spec, write_result
spec = read_spec()
time.sleep(spec.get("sleep", 0))
write_result(spec, {"echo": spec["x"], "path0": sys.path[0],
                    "offline": os.environ.get("HF_HUB_OFFLINE")})
"""


@pytest.fixture
def worker_module(tmp_path, monkeypatch):
    """A worker module on PYTHONPATH (as ttdecomp's are), and a cwd full of traps."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "probe_worker.py").write_text(WORKER)
    path = os.pathsep.join(p for p in (str(lib), os.environ.get("PYTHONPATH")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    for name in ("json", "pickle", "numpy", "time"):
        (cwd / f"{name}.py").write_text(f"open({str(cwd / 'MARKER')!r}, 'a').write('{name}')\n")
    monkeypatch.chdir(cwd)
    return cwd


def test_workers_never_import_from_the_working_folder(worker_module, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with WorkerPool(2) as pool:
        for i in range(2):
            pool.submit(i, "probe_worker", {"x": i}, result=tmp_path / f"r{i}.json")
        done = sorted(pool.results(poll=0.05), key=lambda w: w.key)
    assert [w.result["echo"] for w in done] == [0, 1]
    assert not (worker_module / "MARKER").exists()  # json.py and friends never ran
    assert all(w.result["path0"] != "" and w.result["path0"] != str(worker_module) for w in done)
    assert [w.result["offline"] for w in done] == [None, None]  # the user's environment decides


def test_a_killed_worker_is_reported_in_one_line_and_its_sibling_finishes(worker_module, tmp_path):
    with WorkerPool(2) as pool:
        pool.submit("slow", "probe_worker", {"x": 1, "sleep": 30}, label="run (tt-lora, 0)",
                    result=tmp_path / "a.json")  # fmt: skip
        pool.submit("fast", "probe_worker", {"x": 2, "sleep": 1}, result=tmp_path / "b.json")
        pool.start_all()
        pool.processes[0].send_signal(signal.SIGKILL)
        done = {w.key: w for w in pool.results(poll=0.05)}
    assert done["fast"].result["echo"] == 2
    assert done["slow"].killed
    assert done["slow"].describe() == (
        "run (tt-lora, 0) was killed by signal 9 (SIGKILL) — out of memory?"
    )
    assert describe_exit("worker 1", -15) == "worker 1 was killed by signal 15 (SIGTERM)"


def test_workers_die_with_their_parent(worker_module, tmp_path):
    psutil = pytest.importorskip("psutil")
    # a parent that starts a long worker, then is killed without a chance to clean up
    parent = subprocess.Popen(
        [sys.executable, "-P", "-c",
         "import time; from ttdecomp.runs import start_worker; "
         "start_worker('probe_worker', {'x': 0, 'sleep': 120, 'result': 'r.json'}); "
         "time.sleep(120)"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        children = []
        while time.monotonic() < deadline and not children:
            children = psutil.Process(parent.pid).children()
            time.sleep(0.1)
        assert children, "the worker did not start"
        time.sleep(1.0)  # the worker has read its spec (and asked to die with its parent)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, alive
    finally:
        parent.kill()


def test_defer_signals_holds_a_signal_until_allow_and_hands_it_to_the_previous_handler():
    from ttdecomp.runs import defer_signals, stop_on_signals

    before = signal.getsignal(signal.SIGINT)
    with stop_on_signals() as should_stop:
        with defer_signals() as allow:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # Python runs handlers between bytecodes: it has run by now
            assert not should_stop()  # held back, not lost
            with pytest.raises(KeyboardInterrupt):
                with allow():
                    raise AssertionError("the held signal is raised on entering allow()")
            assert should_stop()  # stop_on_signals' handler got it
            with pytest.raises(KeyboardInterrupt):  # inside allow(): at once
                with allow():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
        assert signal.getsignal(signal.SIGINT) not in (before, signal.SIG_DFL)  # restored
    with pytest.raises(KeyboardInterrupt):  # one held to the end is handed on on leaving
        with stop_on_signals(), defer_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_worker_path_has_no_pickle():
    sources = [
        PACKAGE / "runs" / "pool.py",
        PACKAGE / "finetune" / "parallel.py",
        PACKAGE / "finetune" / "worker.py",
        PACKAGE / "search" / "workers.py",
        PACKAGE / "search" / "worker.py",
    ]
    for path in sources:
        text = path.read_text()
        tree = ast.parse(text)
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "pickle" not in imported, path
        assert "sys.executable" not in text or path.name == "pool.py", path  # one launcher


# ----------------------------------------------------------------------------- finetune
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from ttdecomp.cli import main  # noqa: E402
from ttdecomp.finetune import load_finetuned, load_results  # noqa: E402
from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv  # noqa: E402

SMALL = ["--train-size", "40", "--val-size", "20", "--test-size", "20", "--batch-size", "8",
         "--max-length", "12", "--no-progress", "--no-figures", "--threads", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs-assets")
    return tiny_classifier_folder(root / "tiny"), toy_sentiment_csv(root / "toy.csv", n=200)


def args(assets, out, *extra):
    model, data = assets
    return ["finetune", "--model", str(model), "--data", str(data), "--output", str(out),
            *SMALL, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def finished(assets, tmp_path_factory):
    """A finished one-run folder (lora, seed 0), copied by the tests that edit it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(args(assets, out, "--methods", "lora", "--max-steps", "2", "--jobs", "1")) == 0
    return out


def _copy(finished, tmp_path):
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "run"))


def test_an_unwritable_output_fails_before_the_model_loads(assets, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    # a model that does not exist: the output is checked first, so its error comes first
    argv = args(("/nonexistent/model", assets[1]), out, "--methods", "lora")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--output {out} cannot be created" in err and "nonexistent" not in err


def test_overwrite_keeps_a_tensorboard_folder_and_foreign_files(assets, tmp_path, capsys):
    out = tmp_path / "run"
    common = ("--methods", "lora", "--max-steps", "2", "--jobs", "1")
    assert main(args(assets, out, *common)) == 0
    assert load_results(out)["files"] == ["results.json", "runs/", "runs/lora-seed0/"]
    (out / "runs" / "Dec07_host").mkdir()  # TensorBoard's default log folder
    (out / "runs" / "Dec07_host" / "events.out.tfevents").write_text("log")
    (out / "notes.txt").write_text("mine")
    assert main(args(assets, out, *common, "--overwrite")) == 0
    assert (out / "runs" / "Dec07_host" / "events.out.tfevents").read_text() == "log"
    assert (out / "notes.txt").read_text() == "mine"
    assert [r["method"] for r in load_results(out)["rows"]] == ["lora"]
    # a folder holding no results.json is refused, whatever --overwrite says
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.csv").write_text("precious")
    assert main(args(assets, other, *common, "--overwrite")) == 2
    assert "holds no results.json" in capsys.readouterr().err
    assert (other / "data.csv").read_text() == "precious"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("config"), "'config' is missing"),
        (lambda d: d["rows"].append("lora"), "rows[1] is a str"),
        (lambda d: d["rows"][0].update(seed="0"), "rows[0] has seed '0'"),
        (lambda d: d["rows"][0].update(run_dir="/etc"), "rows[0] has run_dir '/etc'"),
        (lambda d: d.update(files="runs"), "'files' is a str"),
    ],
)
def test_resume_says_what_is_wrong_with_results_json(
    assets, finished, tmp_path, capsys, edit, message
):
    out = _copy(finished, tmp_path)
    common = ("--methods", "lora", "--max-steps", "2", "--jobs", "1")
    document = json.loads((out / "results.json").read_text())
    edit(document)
    (out / "results.json").write_text(json.dumps(document))
    assert main(args(assets, out, *common, "--seeds", "0,1", "--resume")) == 2
    err = capsys.readouterr().err
    assert message in err and "results.json" in err, err


def test_load_finetuned_follows_no_path_out_of_the_run_folder(assets, finished, tmp_path):
    out = _copy(finished, tmp_path)
    with pytest.raises(InvalidInputError, match=r"outside the run folder.*model="):
        load_finetuned(out, "lora", 0)  # the tiny model lives outside the run folder
    model, _ = load_finetuned(out, "lora", 0, model=assets[0])
    assert not model.training
    document = json.loads((out / "results.json").read_text())
    document["rows"][0]["run_dir"] = "../../elsewhere"
    (out / "results.json").write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match="follows no path out of the run folder"):
        load_finetuned(out, "lora", 0, model=assets[0])


def _workers(pid: int, n: int, timeout: float = 120.0) -> list:
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [
            p for p in psutil.Process(pid).children(recursive=True)
            if "ttdecomp.finetune.worker" in " ".join(p.cmdline())
        ]  # fmt: skip
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{n} workers did not start in {timeout} s")


def _command(assets, out, *extra):
    return [sys.executable, "-P", "-m", "ttdecomp", *args(assets, out, *extra)]


@pytest.mark.slow
def test_sigterm_stops_a_two_job_finetune_and_its_workers(assets, tmp_path):
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    argv = _command(assets, out, "--methods", "lora,tt-lora", "--max-steps", "400", "--jobs", "2")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        workers = _workers(proc.pid, 2)
        assert all("-P" in w.cmdline() for w in workers)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err.decode()
        assert b"interrupted. No run had finished; nothing was saved." in err
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, alive
        assert not list(out.rglob("*.pkl"))
    finally:
        proc.kill()


@pytest.mark.slow
def test_a_killed_run_is_reported_its_sibling_kept_and_resume_finishes(assets, tmp_path):
    out = tmp_path / "run"
    common = ("--methods", "lora,tt-lora", "--jobs", "2")
    argv = _command(assets, out, *common, "--max-steps", "60")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        victim = _workers(proc.pid, 2)[0]
        time.sleep(2.0)
        victim.send_signal(signal.SIGKILL)  # what the out-of-memory killer does
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    text = err.decode()
    assert proc.returncode == 2, text
    lines = [line for line in text.splitlines() if "was killed by signal 9" in line]
    assert lines and "Traceback" not in text, text
    assert "— out of memory?" in lines[0] and "--resume" in text
    kept = load_results(out)["rows"]
    assert len(kept) == 1  # the sibling finished and kept its row
    assert f"run ({kept[0]['method']}, 0) was killed" not in text
    done = subprocess.run([*argv, "--resume"], capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    final = load_results(out)
    assert sorted(r["method"] for r in final["rows"]) == ["lora", "tt-lora"]
    assert final["rows"][0] == kept[0]


@pytest.mark.slow
def test_search_overwrite_deletes_only_what_the_previous_search_recorded(assets, tmp_path, capsys):
    pytest.importorskip("optuna")
    out = tmp_path / "search"
    model, data = assets
    argv = ["search", "--model", str(model), "--data", str(data), "--output", str(out),
            "--train-size", "32", "--val-size", "16", "--test-size", "16", "--batch-size", "8",
            "--max-length", "12", "--epochs", "1", "--threads", "1", "--no-progress",
            "--n-trials", "1", "--no-retrain", "--no-figures", "--methods", "lora",
            "--param", "lora.r=2"]  # fmt: skip
    assert main(argv) == 0
    files = json.loads((out / "search.json").read_text())["files"]
    assert files == [".scratch/", "search.json", "study.db"]
    (out / "best").mkdir()  # a folder of the user's that the old --overwrite deleted by name
    (out / "best" / "model.bin").write_text("mine")
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "best" / "model.bin").read_text() == "mine"
    # an --overwrite that fails while loading (data without a label column, found only when
    # the data is read, after the workers' database is made) keeps the previous search whole
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = tmp_path / "bad.csv"
    bad.write_text("words,stars\nfine,5\nbad,1\n")
    capsys.readouterr()
    assert main([*argv[:4], str(bad), *argv[5:], "--overwrite"]) == 2
    assert "bad.csv" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in out.iterdir()) == ["best", "search.json", "study.db"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "study.db").write_text("someone else's database")
    assert main([*argv[:6], str(other), *argv[7:], "--overwrite"]) == 2
    assert "holds no search.json" in capsys.readouterr().err
    assert (other / "study.db").read_text() == "someone else's database"


def test_a_results_json_of_the_previous_version_is_overwritten_by_its_plan(tmp_path):
    from ttdecomp.finetune.run import _legacy_files

    out = tmp_path / "out"
    _previous_run(out, [])
    document = {  # written before "files" was recorded: its plan says what it owns
        "config": {"methods": ["lora"], "seeds": [0], "identity": {}, "settings": {}},
        "rows": [{"method": "lora", "seed": 0, "run_dir": "runs/lora-seed0"}],
        "complete": True,
    }
    (out / "results.json").write_text(json.dumps(document))
    (out / "validation_curves.png").write_bytes(b"png")
    (out / "runs" / "events").mkdir()  # TensorBoard's
    folder = OutputFolder(out, "results.json", legacy_files=_legacy_files)
    folder.prepare(resume=False, overwrite=True)
    removed = folder.clear_previous()
    assert sorted(removed) == ["results.json", "runs/lora-seed0", "validation_curves.png"]
    assert sorted(p.name for p in out.rglob("*")) == ["events", "runs"]
