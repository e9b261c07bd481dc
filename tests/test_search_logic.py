"""The search's logic with a job that trains nothing: pruning, grids, budgets, repeats, resume.

As Optuna tests HyperBand with a three-line objective, these tests register a task whose job
reports a made-up validation curve (a function of the sampled settings) instead of training;
everything else is the real search: the space, the sampler, the pruner, the SQLite study, the
report. The real-model runs of the same logic are in ``test_search.py`` (marked ``slow``).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
optuna = pytest.importorskip("optuna")

from ttdecomp.finetune.tasks import register_task, unregister_task  # noqa: E402
from ttdecomp.finetune.tasks.classification import ClassificationTask  # noqa: E402
from ttdecomp.search import SearchConfig, search  # noqa: E402
from ttdecomp.search.study import Objective  # noqa: E402

EPOCHS = 4


class FakeJob:
    """The real classification job (data, targets, model config) whose runs train nothing."""

    def __init__(self, job):
        self.job, self.calls = job, []

    def __getattr__(self, name):
        return getattr(self.job, name)

    def run(self, settings, train, run_dir, *, on_evaluate=None, final=True):
        self.calls.append((settings, final))
        # a curve rising to a plateau set by the settings: higher rank and lr are better
        plateau = 0.5 + 0.04 * (settings.rank or 0) + 10 * settings.lr
        history = []
        for epoch in range(1, train.epochs + 1):
            value = plateau * (1 - 0.5**epoch)
            entry = {
                "epoch": float(epoch),
                "step": 4 * epoch,
                "val_accuracy": value,
                "val_loss": 1 - value,
            }
            history.append(entry)
            if on_evaluate is not None:
                on_evaluate(entry)
        best = max(h["val_accuracy"] for h in history)
        return {
            "method": settings.method,
            "seed": train.seed,
            "adapter_params": 0,
            "extra_params": 0,
            "val_accuracy": best,
            "history": history,
            "test_accuracy": best - 0.01 if final else None,
            "settings": settings.to_dict(),
        }


class FakeTask(ClassificationTask):
    name = "fake-classification"
    fallback = False

    def prepare(self, config, model_path, *, progress=False):
        job = FakeJob(super().prepare(config, model_path, progress=progress))
        FakeTask.last_job = job
        return job


@pytest.fixture(autouse=True)
def fake_task():
    task = register_task(FakeTask())
    yield task
    unregister_task(task.name)


def config(tiny_classifier, toy_csv, **options):
    common = dict(
        model=str(tiny_classifier),
        data=str(toy_csv),
        task="fake-classification",
        sizes=(32, 16, 16),
        batch_size=8,
        max_length=12,
        epochs=EPOCHS,
    )
    return SearchConfig(**common, **options)


def run(tiny_classifier, toy_csv, out, *, retrain=False, resume=False, **options):
    return search(
        config(tiny_classifier, toy_csv, **options),
        output=out,
        progress=False,
        retrain=retrain,
        resume=resume,
        figures=False,
    )


def trained(final=False):
    return [s for s, f in FakeTask.last_job.calls if f is final]


def test_grid_runs_every_configuration_once_without_pruning(tiny_classifier, toy_csv, tmp_path):
    result = run(
        tiny_classifier,
        toy_csv,
        tmp_path / "g",
        sampler="grid",
        space={"lora": {"r": [2, 4], "lr": [1e-3, 1e-2]}},
    )
    configs = sorted((t["config"]["r"], t["config"]["lr"]) for t in result.trials)
    assert configs == [(2, 1e-3), (2, 1e-2), (4, 1e-3), (4, 1e-2)]
    assert all(t["state"] == "complete" and t["evaluations"] == EPOCHS for t in result.trials)
    assert isinstance(result.study.pruner, optuna.pruners.NopPruner)
    assert sorted((s.rank, s.lr) for s in trained()) == configs  # each trained once
    assert result.best == [] and not (tmp_path / "g" / "best").exists()


def test_hyperband_prunes_by_reported_evaluations_never_at_the_last(
    tiny_classifier, toy_csv, tmp_path
):
    result = run(
        tiny_classifier,
        toy_csv,
        tmp_path / "h",
        n_trials=12,
        startup_trials=3,
        params=["lora.r=1,2,4,8,16", "lora.lr=1e-4:2e-2"],
        methods=["lora"],
        reduction_factor=2,
    )
    study = result.study
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    for t in study.trials:  # every evaluation reported, step = evaluation
        history = t.user_attrs["history"]
        assert sorted(t.intermediate_values) == list(range(1, len(history) + 1))
        assert [t.intermediate_values[i + 1] for i in range(len(history))] == [
            h["val_accuracy"] for h in history
        ]
        assert (len(history) < EPOCHS) == (t.state.name == "PRUNED")


def test_an_epoch_budget_is_spent_and_never_overspent_and_resume_spends_more(
    tiny_classifier, toy_csv, tmp_path
):
    out = tmp_path / "b"
    opts = dict(pruner="none", methods=["lora"], params=["lora.r=2,4,8,16"])
    result = run(tiny_classifier, toy_csv, out, epoch_budget=10, **opts)
    doc = json.loads((out / "search.json").read_text())
    # 4-epoch trials in a 10-epoch budget: two complete, the third stopped after two epochs
    assert [t["epochs"] for t in result.trials] == [4.0, 4.0, 2.0]
    assert [t["state"] for t in result.trials] == ["complete", "complete", "pruned"]
    assert [t["stopped"] for t in result.trials] == [None, None, "epoch budget"]
    assert doc["epochs_total"] == 10.0 and doc["n_trials"] is None
    again = run(tiny_classifier, toy_csv, out, epoch_budget=14, resume=True, **opts)
    assert sum(t["epochs"] for t in again.trials) == 14.0 and len(again.trials) == 4


def test_a_configuration_drawn_again_is_scored_without_training(
    tiny_classifier, toy_csv, tmp_path, monkeypatch
):
    monkeypatch.setattr(Objective, "MAX_REPEATS", 6)  # the space is exhausted sooner
    space = {"lora": {"r": [2], "lr": [1e-3]}}
    result = run(tiny_classifier, toy_csv, tmp_path / "r", space=space, n_trials=3)
    first, *again = result.trials
    assert first["evaluations"] == EPOCHS and first["repeat_of"] is None
    assert [t["repeat_of"] for t in again] == [first["number"]] * 2
    assert all(t["epochs"] == 0 and t["value"] == first["value"] for t in again)
    assert len(trained()) == 1  # the job ran once
    budgeted = run(tiny_classifier, toy_csv, tmp_path / "rb", space=space, epoch_budget=100)
    assert len(budgeted.trials) == 1 + Objective.MAX_REPEATS and len(trained()) == 1


def test_the_front_and_each_methods_best_are_retrained_and_tested_once(
    tiny_classifier, toy_csv, tmp_path
):
    result = run(
        tiny_classifier,
        toy_csv,
        tmp_path / "f",
        retrain=True,
        pareto=True,
        sampler="grid",
        space={"tt-lora": {"tt_rank": [1, 2]}, "lora": {"r": [1, 2], "lr": [1e-3]}},
    )
    assert {b["trial"] for b in result.best} >= {f["number"] for f in result.front}
    methods = {b["method"] for b in result.best}
    assert methods == {"tt-lora", "lora"}
    retrained = trained(final=True)
    assert len(retrained) == len(result.best)  # once each, test evaluated in those runs only
    for b in result.best:
        assert b["test"] == pytest.approx(b["val"] - 0.01)


def test_a_study_with_another_space_is_refused_unless_resumed(
    tiny_classifier, toy_csv, tmp_path, capsys
):
    from ttdecomp.errors import InvalidInputError

    db = f"sqlite:///{tmp_path / 'shared.db'}"

    def go(out, r, n=1, resume=False):
        return search(
            config(tiny_classifier, toy_csv, methods=["lora"], params=[f"lora.r={r}"], n_trials=n),
            output=tmp_path / out,
            storage=db,
            study_name="s",
            resume=resume,
            progress=False,
            retrain=False,
            figures=False,
        )

    go("a", 2)
    with pytest.raises(InvalidInputError, match="exists with another search space"):
        go("b", 4)
    resumed = go("c", 4, n=2, resume=True)
    assert sorted(t["config"]["r"] for t in resumed.trials) == [2, 4]


def test_search_quick_settings_come_from_the_task(tiny_classifier, toy_csv):
    quick = SearchConfig(model=str(tiny_classifier), data=str(toy_csv), quick=True)
    assert (quick.finetune.sizes, quick.finetune.epochs) == ((128, 64, 64), 2)
    given = SearchConfig(model=str(tiny_classifier), data=str(toy_csv), quick=True, epochs=1)
    assert given.finetune.epochs == 1 and given.finetune.batch_size == 16
    assert SearchConfig.from_dict(quick.to_dict()).finetune == quick.finetune


def test_settings_a_space_does_not_search_are_the_finetune_configurations(
    tiny_classifier, toy_csv, tmp_path
):
    from ttdecomp.finetune import FinetuneConfig

    finetune = FinetuneConfig(
        model=str(tiny_classifier),
        data=str(toy_csv),
        lr=2e-3,
        task="fake-classification",
        sizes=(32, 16, 16),
        batch_size=8,
        max_length=12,
        epochs=1,
    )
    result = search(
        SearchConfig(finetune, space={"lora": {"r": [2]}}, n_trials=1),
        output=tmp_path / "s",
        progress=False,
        retrain=False,
        figures=False,
    )
    (settings,) = trained()
    assert (settings.rank, settings.lr, settings.alpha) == (2, 2e-3, 16.0)
    assert result.trials[0]["config"] == {"method": "lora", "r": 2}


def test_finetune_options_and_a_finetune_config_together_are_refused(tiny_classifier, toy_csv):
    from ttdecomp.errors import InvalidInputError
    from ttdecomp.finetune import FinetuneConfig

    with pytest.raises(InvalidInputError, match="not both"):
        SearchConfig(FinetuneConfig(), epochs=2)
    with pytest.raises(InvalidInputError, match=r"unknown search options \['epoch'\]"):
        SearchConfig(epoch=2)


def test_a_trial_numbered_beyond_the_count_is_surplus_and_left_out_of_the_counts():
    """Two processes can pass the 'fewer than n trials' check at the same moment and each start
    a trial; trial numbers are handed out one at a time, so the later one must train nothing."""
    from types import SimpleNamespace

    import optuna

    from ttdecomp.search.study import SURPLUS, Objective, trial_counts

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    trials = [study.ask() for _ in range(3)]  # numbers 0, 1, 2, all running
    gate = SimpleNamespace(max_trials=2)
    assert [Objective.is_surplus(gate, t) for t in trials] == [False, False, True]
    assert not Objective.is_surplus(SimpleNamespace(max_trials=None), trials[2])
    study.tell(trials[0], state=optuna.trial.TrialState.FAIL)  # a failed slot is run again
    assert not Objective.is_surplus(gate, trials[2])
    trials[2].set_user_attr(SURPLUS, True)
    study.tell(trials[2], state=optuna.trial.TrialState.FAIL)
    assert trial_counts(study) == {"complete": 0, "pruned": 0, "running": 1, "failed": 1,
                                   "waiting": 0}  # fmt: skip
