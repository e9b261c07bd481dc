"""``ttdecomp search`` end to end on a tiny model: outputs, grid, resume, Ctrl-C, bad input,
two workers on one SQLite file, two processes on a real PostgreSQL server.

The runs that train are marked ``slow``: the same search logic (pruning, grids, budgets,
repeats, resume) is tested without training in ``test_search_logic.py``.

The tiny BERT and the toy CSV come from :mod:`ttdecomp.finetune.testing` (no packaged asset);
``test_search_quick_on_minilm`` runs ``--quick`` on the real MiniLM and tweets.

PostgreSQL: the URL is ``TTDECOMP_TEST_POSTGRES_URL`` (``.ci/run`` starts a server and sets
it), else ``postgresql://ttdecomp:ttdecomp@localhost:5432/ttdecomp_search``; the test skips,
saying why, when no server answers there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
optuna = pytest.importorskip("optuna")

from ttdecomp.cli import main  # noqa: E402
from ttdecomp.search import SearchConfig, search  # noqa: E402
from ttdecomp.search.study import Objective  # noqa: E402

SMALL = [
    "--train-size",
    "32",
    "--val-size",
    "16",
    "--test-size",
    "16",
    "--batch-size",
    "8",
    "--max-length",
    "12",
    "--epochs",
    "2",
    "--threads",
    "1",
    "--no-progress",
]
TINY_SPACE = ["--param", "tt-lora.tt_rank=2,4", "--param", "lora.r=2,4"]
POSTGRES_URL = os.environ.get(
    "TTDECOMP_TEST_POSTGRES_URL", "postgresql://ttdecomp:ttdecomp@localhost:5432/ttdecomp_search"
)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def assets(tiny_classifier, toy_csv):
    return tiny_classifier, toy_csv


def args(assets, out, *extra):
    model, data = assets
    return ["search", "--model", str(model), "--data", str(data), "--output", str(out), *SMALL,
            *extra]  # fmt: skip


def command(argv):
    return [sys.executable, "-m", "ttdecomp", *argv]


def load(out):
    return json.loads((out / "search.json").read_text())


def finished(trials):
    return [t for t in trials if t["state"] in ("complete", "pruned")]


@pytest.mark.slow
def test_search_writes_table_json_figure_and_tests_the_best(assets, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(args(assets, out, "--n-trials", "3", "--pareto", *TINY_SPACE)) == 0
    printed = capsys.readouterr().out
    doc = load(out)
    assert (out / "study.db").is_file() and (out / "search_front.png").stat().st_size > 1000
    assert doc["counts"]["complete"] == 3 and doc["metric"] == "val_accuracy"
    for t in doc["trials"]:
        assert t["evaluations"] == 2 == len(t["history"])  # one validation per epoch
        assert t["config"]["method"] in ("tt-lora", "lora")
        assert t["value"] == max(h["val_accuracy"] for h in t["history"])
    # the front: no complete trial has more accuracy with fewer or equal parameters
    for f in doc["front"]:
        assert not any(
            t["value"] > f["value"] and t["adapter_params"] <= f["adapter_params"]
            for t in doc["trials"]
        )
    # every front point and each method's best re-trained, tested once, adapter saved
    assert {b["trial"] for b in doc["best"]} >= {f["number"] for f in doc["front"]}
    for b in doc["best"]:
        assert 0.0 <= b["test"] <= 1.0
        assert (out / b["run_dir"] / "adapter" / "ttdecomp_method.json").is_file()
        # the re-trained run is the trial's configuration, with the same parameter count
        trial = next(t for t in doc["trials"] if t["number"] == b["trial"])
        assert b["adapter_params"] == trial["adapter_params"]
    assert "val acc" in printed and "test acc" in printed
    study = optuna.load_study(study_name="ttdecomp-search", storage=f"sqlite:///{out}/study.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # the same folder again without --resume or --overwrite is refused
    assert main(args(assets, out, "--n-trials", "3", "--pareto", *TINY_SPACE)) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_grid_runs_every_configuration_once_without_pruning(assets, tmp_path):
    out = tmp_path / "g"
    result = search(
        SearchConfig(
            model=str(assets[0]),
            data=str(assets[1]),
            space={"lora": {"r": [2, 4], "lr": [1e-3, 1e-2]}},
            sampler="grid",
            sizes=(32, 16, 16),
            batch_size=8,
            max_length=12,
            epochs=2,
        ),
        output=out,
        progress=False,
        retrain=False,
        figures=False,
    )
    configs = sorted((t["config"]["r"], t["config"]["lr"]) for t in result.trials)
    assert configs == [(2, 1e-3), (2, 1e-2), (4, 1e-3), (4, 1e-2)]
    assert all(t["state"] == "complete" and t["evaluations"] == 2 for t in result.trials)
    assert isinstance(result.study.pruner, optuna.pruners.NopPruner)
    assert load(out)["best"] == [] and not (out / "best").exists()


@pytest.mark.slow
def test_hyperband_prunes_by_reported_epochs(assets, tmp_path):
    out = tmp_path / "h"
    assert (
        main(args(assets, out, "--n-trials", "3", "--no-retrain", "--no-figures", *TINY_SPACE)) == 0
    )
    study = optuna.load_study(study_name="ttdecomp-search", storage=f"sqlite:///{out}/study.db")
    assert load(out)["config"]["pruner"] == "hyperband"
    for t in study.trials:  # every evaluation was reported to the pruner, step = epoch
        history = t.user_attrs["history"]
        assert sorted(t.intermediate_values) == list(range(1, len(history) + 1))
        assert [t.intermediate_values[i + 1] for i in range(len(history))] == [
            h["val_accuracy"] for h in history
        ]
        if t.state.name == "PRUNED":
            assert len(history) < 2
        else:
            assert len(history) == 2


@pytest.mark.slow
def test_an_epoch_budget_is_spent_and_never_overspent(assets, tmp_path):
    out = tmp_path / "b"

    def argv(budget, *extra):
        return args(assets, out, "--epoch-budget", budget, "--pruner", "none", "--no-retrain",
                    "--no-figures", *TINY_SPACE, *extra)  # fmt: skip

    assert main(argv("5")) == 0
    doc = load(out)
    # 2-epoch trials in a 5-epoch budget: two complete, the third stopped after its first
    # epoch, when a second one would overspend; no trial is started after that
    assert doc["n_trials"] is None and doc["epoch_budget"] == 5
    assert [t["epochs"] for t in doc["trials"]] == [2.0, 2.0, 1.0]
    assert [t["state"] for t in doc["trials"]] == ["complete", "complete", "pruned"]
    assert [t["stopped"] for t in doc["trials"]] == [None, None, "epoch budget"]
    assert doc["epochs_total"] == 5.0
    # a resumed search with a larger budget goes on spending it
    assert main(argv("7", "--resume")) == 0
    again = load(out)
    assert again["epochs_total"] == 7.0 and len(again["trials"]) == 4


@pytest.mark.slow
def test_a_configuration_drawn_again_is_scored_without_training(assets, tmp_path):
    def run(out, **options):
        config = SearchConfig(model=str(assets[0]), data=str(assets[1]), sizes=(32, 16, 16),
                              space={"lora": {"r": [2], "lr": [1e-3]}}, batch_size=8,
                              max_length=12, epochs=2, **options)  # fmt: skip
        return search(config, output=out, progress=False, retrain=False, figures=False)

    result = run(tmp_path / "r", n_trials=3)
    first, *again = result.trials
    assert first["evaluations"] == 2 and first["repeat_of"] is None
    assert [t["repeat_of"] for t in again] == [first["number"]] * 2
    assert all(t["epochs"] == 0 and t["value"] == first["value"] for t in again)
    assert [f["number"] for f in result.front] == [first["number"]]
    # a budget on an exhausted space: trials stop after MAX_REPEATS repeats in a row
    budgeted = run(tmp_path / "rb", epoch_budget=100)
    assert len(budgeted.trials) == 1 + Objective.MAX_REPEATS
    assert load(tmp_path / "rb")["epochs_total"] == 2.0


@pytest.mark.slow
def test_hyperband_with_a_budget_never_prunes_a_trial_that_has_run_every_epoch(assets, tmp_path):
    out = tmp_path / "hb"
    argv = args(assets, out, "--epoch-budget", "9", "--startup-trials", "2",
                "--reduction-factor", "2", "--no-retrain", "--no-figures", *TINY_SPACE)  # fmt: skip
    assert main(argv) == 0
    doc = load(out)
    # one process: stopped exactly when one more epoch would overspend the budget
    assert doc["epochs_total"] == 9.0
    for t in doc["trials"]:
        if t["state"] == "pruned":  # cut at a rung or by the budget: fewer than every epoch
            assert t["evaluations"] < doc["full_trial_evaluations"]
        else:
            assert t["evaluations"] == doc["full_trial_evaluations"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "dora"], "unknown method 'dora'"),
        (["--param", "lora.rank=4"], "unknown parameter 'rank' for lora"),
        (["--param", "tt-lora.lr=1e-2:1e-4"], "low 0.01 > high 0.0001"),
        (["--param", "lora.lr=-1e-3"], "learning rate -0.001 is out of range"),
        (["--param", "tt-lora.tt_shape=7,7,7,7"], "search space, tt-lora: module"),
        (["--workers", "0"], "--workers must be an integer >= 1; got 0."),
        (["--epoch-budget", "0"], "--epoch-budget must be a finite number > 0; got 0.0."),
        (["--sampler", "grid", "--startup-trials", "2"], "--startup-trials sets TPE's"),
        (["--reduction-factor", "1"], "--reduction-factor must be an integer >= 2; got 1."),
        (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "cannot reach the study storage"),
    ],
)
def test_bad_input_fails_before_training(assets, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(args(assets, out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "secret" not in err
    assert not (out / "search.json").exists()


def test_an_unknown_sampler_is_a_usage_error(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args(assets, tmp_path / "bad", "--sampler", "annealing"))
    assert exit_.value.code == 2
    assert "invalid choice: 'annealing'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_a_study_with_another_space_is_refused_unless_resumed(assets, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["--storage", db, "--study-name", "s", "--n-trials", "1", "--no-retrain",
              "--no-figures", "--methods", "lora"]  # fmt: skip
    assert main(args(assets, tmp_path / "a", *common, "--param", "lora.r=2")) == 0
    assert main(args(assets, tmp_path / "b", *common, "--param", "lora.r=4")) == 2
    err = capsys.readouterr().err
    assert "exists with another search space" in err and "--resume" in err
    resumed = args(assets, tmp_path / "c", *common, "--param", "lora.r=4", "--resume")
    resumed[resumed.index("--n-trials") + 1] = "2"
    assert main(resumed) == 0
    doc = load(tmp_path / "c")
    assert sorted(t["config"]["r"] for t in doc["trials"]) == [2, 4]


@pytest.mark.slow
def test_ctrl_c_keeps_finished_trials_and_resume_continues(assets, tmp_path):
    out = tmp_path / "i"
    argv = args(assets, out, "--n-trials", "4", "--no-retrain", "--no-figures",
                "--pruner", "none", *TINY_SPACE)  # fmt: skip
    proc = subprocess.Popen(command(argv), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = f"sqlite:///{out}/study.db"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            study = optuna.load_study(study_name="ttdecomp-search", storage=storage)
            done = sum(t.state.name == "COMPLETE" for t in study.trials)
        except Exception:  # the study is not created yet
            done = 0
        if done >= 1:
            break
        time.sleep(0.5)
    assert proc.poll() is None and done >= 1, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()
    assert b"--resume" in err
    kept = load(out)
    assert kept["interrupted"] is True
    complete = {t["number"]: t["value"] for t in kept["trials"] if t["state"] == "complete"}
    assert 1 <= len(complete) < 4
    again = subprocess.run(command([*argv, "--resume"]), env=ENV, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    final = load(out)
    assert len(finished(final["trials"])) == 4
    for number, value in complete.items():  # the finished trials were kept, not redone
        assert next(t for t in final["trials"] if t["number"] == number)["value"] == value


class _SignalsInAsk:
    """A sampler that sends this process ``signum`` while Optuna asks for trial ``at``: the
    trial is already in the storage as running, and no ``try`` of Optuna's covers the moment."""

    def __init__(self, inner, at: int, signum: int):
        self.inner, self.at, self.signum = inner, at, signum

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def before_trial(self, study, trial):
        self.inner.before_trial(study, trial)
        if trial.number == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_optunas_bookkeeping_stops_cleanly(assets, tmp_path, signum):
    # Ctrl-C or SIGTERM landing between trials (inside study.ask, or while the next trial's
    # heartbeat thread starts) must neither leave a trial "running" for good (a resumed
    # search waits for it) nor leave the heartbeat thread running (the process never exits)
    import threading

    from ttdecomp.runs import stop_on_signals
    from ttdecomp.search.context import SearchContext, run_trials

    config = SearchConfig(model=str(assets[0]), data=str(assets[1]), sizes=(32, 16, 16),
                          space={"lora": {"r": [2, 4]}}, batch_size=8, max_length=12,
                          epochs=1, pruner="none")  # fmt: skip
    out = tmp_path / "s"
    out.mkdir()
    storage = f"sqlite:///{out}/study.db"
    context = SearchContext(config, out, storage, progress=False)
    study = context.study(resume=False, name="signals")
    study.sampler = _SignalsInAsk(study.sampler, at=1, signum=signum)
    with stop_on_signals() as should_stop:
        stopped = run_trials(context, study, 3, should_stop=should_stop)
        assert should_stop()
    assert stopped is True
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    assert states == ["COMPLETE", "FAIL"], states  # trial 1 never trained: failed, not running
    lingering = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
    assert lingering == [threading.main_thread().name], lingering


def _open_storage_in_child(url: str, results) -> None:
    from ttdecomp.search.study import open_storage

    try:
        open_storage(url)
        results.put("ok")
    except Exception as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_sqlite_study_together_all_succeed(tmp_path):
    # a worker and a watcher (optuna-dashboard, a progress poller) creating Optuna's tables in
    # the same new file race; SQLite reports the loser as "table ... already exists"
    import multiprocessing

    ctx = multiprocessing.get_context("fork")  # no re-import: the race is the open itself
    for attempt in range(2):
        url = f"sqlite:///{tmp_path}/race{attempt}.db"
        results = ctx.Queue()
        procs = [ctx.Process(target=_open_storage_in_child, args=(url, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert outcomes == ["ok"] * 4, outcomes


@pytest.mark.slow
def test_two_workers_share_one_sqlite_file(assets, tmp_path):
    out = tmp_path / "w"
    argv = args(assets, out, "--n-trials", "4", "--workers", "2", "--no-figures", "--pruner",
                "none", *TINY_SPACE)  # fmt: skip
    proc = subprocess.run(command(argv), env=ENV, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    doc = load(out)
    # exactly the asked number: no process starts a trial once finished + running reach it
    assert len(doc["trials"]) == len(finished(doc["trials"])) == 4
    # the command's own process and the one it started both ran trials
    assert len({t["worker"] for t in doc["trials"]}) == 2
    assert len({t["number"] for t in doc["trials"]}) == len(doc["trials"])
    # the re-training ran side by side in other processes and reproduced every trial
    assert {b["trial"] for b in doc["best"]} >= {f["number"] for f in doc["front"]}
    for b in doc["best"]:
        trial = next(t for t in doc["trials"] if t["number"] == b["trial"])
        assert b["val"] == trial["value"] and 0.0 <= b["test"] <= 1.0
        assert (out / b["run_dir"] / "adapter" / "ttdecomp_method.json").is_file()


@pytest.mark.slow
def test_two_workers_on_a_grid_train_every_point_once(assets, tmp_path):
    out = tmp_path / "wg"
    space = tmp_path / "grid.json"
    space.write_text(json.dumps({"lora": {"r": [2, 4], "lr": [1e-3, 1e-2]}}))
    argv = args(assets, out, "--sampler", "grid", "--space", str(space), "--workers", "2",
                "--no-figures", "--no-retrain")  # fmt: skip
    proc = subprocess.run(command(argv), env=ENV, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr.decode()
    trials = load(out)["trials"]
    assert len({t["worker"] for t in trials}) == 2
    configs = sorted((t["config"]["r"], t["config"]["lr"]) for t in trials)
    assert configs == [(2, 1e-3), (2, 1e-2), (4, 1e-3), (4, 1e-2)]  # no point twice
    assert all(t["state"] == "complete" and t["epochs"] > 0 for t in trials)


def _postgres_reachable() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'ttdecomp[search]')"
    try:
        psycopg.connect(POSTGRES_URL.replace("postgresql+psycopg", "postgresql"),
                        connect_timeout=3).close()  # fmt: skip
    except Exception as exc:
        return f"no PostgreSQL server at {POSTGRES_URL.split('@')[-1]}: {str(exc).strip()[:200]}"
    return None


@pytest.mark.slow
def test_two_processes_share_one_postgresql_study(assets, tmp_path):
    reason = _postgres_reachable()
    if reason:
        pytest.skip(reason + " (set TTDECOMP_TEST_POSTGRES_URL; .ci/run starts one)")
    name = f"test-{uuid.uuid4().hex[:8]}"
    shared = ["--storage", POSTGRES_URL, "--study-name", name, "--n-trials", "4", "--no-retrain",
              "--no-figures", *TINY_SPACE]  # fmt: skip
    procs = [
        subprocess.Popen(
            command(args(assets, tmp_path / f"machine{i}", *shared)),
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err.decode()
    study = optuna.load_study(study_name=name, storage=POSTGRES_URL)
    trials = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(trials) == len(study.trials) == 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    docs = [load(tmp_path / f"machine{i}") for i in range(2)]
    assert all(d["storage"].endswith(POSTGRES_URL.split("@")[-1]) for d in docs)
    assert "ttdecomp:ttdecomp@" not in docs[0]["storage"]  # the password is not written
    optuna.delete_study(study_name=name, storage=POSTGRES_URL)


@pytest.mark.integration
def test_search_quick_on_minilm(tmp_path, capsys):
    from ttdecomp.finetune import asset_status

    missing = [k for k, v in asset_status().items() if k in ("minilm", "tweets") and not v]
    if missing:
        pytest.skip(f"packaged assets missing: {missing}")
    out = tmp_path / "q"
    assert main(["search", "--quick", "--threads", "1", "--no-progress", "--output", str(out)]) == 0
    doc = load(out)
    assert len(finished(doc["trials"])) == 4
    assert doc["config"]["quick"] is True
    methods = {t["config"]["method"] for t in doc["trials"]}
    assert methods <= {"tt-lora", "lora"}
    assert doc["best"] and all(0.5 <= b["test"] <= 1.0 for b in doc["best"])


@pytest.mark.integration
def test_causal_lm_search_minimises_validation_loss(tmp_path):
    from ttdecomp.finetune import asset_status

    missing = [k for k, v in asset_status().items() if k in ("smollm2", "chatterbot") and not v]
    if missing:
        pytest.skip(f"packaged assets missing: {missing}")
    out = tmp_path / "c"
    argv = ["search", "--model", "smollm2", "--data", "chatterbot", "--quick", "--methods",
            "tt-lora", "--param", "tt-lora.tt_rank=2,4", "--n-trials", "2", "--max-steps", "2",
            "--threads", "1", "--no-progress", "--no-retrain", "--no-figures", "--output",
            str(out)]  # fmt: skip
    assert main(argv) == 0
    doc = load(out)
    assert doc["metric"] == "val_loss" and doc["task"] == "causal"
    for t in finished(doc["trials"]):
        assert t["value"] == min(h["val_loss"] for h in t["history"]) > 0
    study = optuna.load_study(study_name="ttdecomp-search", storage=f"sqlite:///{out}/study.db")
    assert [d.name for d in study.directions] == ["MINIMIZE"]
