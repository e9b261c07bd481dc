"""``ttdecomp finetune`` as a function: every (method, seed) run, resumable, with its report.

:func:`finetune` validates everything before any training (model, data, methods, settings,
targets, the output folder), then runs the methods × seeds one after the other. After each
finished run its row is added to ``results.json`` (rewritten atomically) together with its saved
adapter, so an interrupt or a crash loses at most the run in progress; ``resume=True`` skips the
finished rows and refuses a folder written with another configuration.

Output folder::

    results.json                 config, package versions, data statistics, rows, summary
    runs/<method>-seed<k>/       adapter/ (reloadable), test_logits.safetensors
    accuracy_vs_params.png       test accuracy against adapter parameters (log axis)
    validation_curves.png        validation accuracy per epoch per method
"""

from __future__ import annotations

import datetime
import importlib.metadata
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..assets.loader import resolve_model
from ..errors import InvalidInputError
from ..runs.folder import OutputFolder
from .config import FinetuneConfig, task_of
from .methods import MethodSettings
from .parallel import RunPool, plan_jobs
from .report import (
    RESULTS_FILE,
    format_table,
    summarize,
    write_figures,
    write_json_atomic,
)
from .train import TrainSettings, is_main_process, resolve_device, world_size

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]

_FIGURES = ("accuracy_vs_params.png", "validation_curves.png")
_DEFAULT_TARGETS = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "mpnet": ["attention.attn.q", "attention.attn.v"],
}


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced: every row, the per-method summary and where it is.

    Examples
    --------
    >>> import tempfile
    >>> from ttdecomp.finetune import FinetuneConfig, finetune
    >>> from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv
    >>> tmp = tempfile.mkdtemp()
    >>> config = FinetuneConfig(model=str(tiny_classifier_folder(tmp + "/model")),
    ...                         data=str(toy_sentiment_csv(tmp + "/toy.csv", n=120)),
    ...                         methods=["tt-lora"], epochs=1, sizes=(40, 20, 20), batch_size=8)
    >>> result = finetune(config, output=tmp + "/out", progress=False, figures=False,
    ...                   echo=lambda line: None)
    >>> [row["method"] for row in result.rows], result.summary[0]["adapter_params"] > 0
    (['tt-lora'], True)
    """

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    table: str
    output: Path
    figures: list[Path]


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for pkg in ("ttdecomp", "torch", "transformers", "peft", "numpy", "accelerate"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _run_dir(method: str, seed: int) -> str:
    return f"runs/{method}-seed{seed}"


def _legacy_files(document: dict[str, Any]) -> list[str]:
    """What a ``results.json`` written before ``"files"`` was recorded owns: the document,
    the run folders of its plan, and the figures of a complete run."""
    config = document.get("config") or {}
    plan = [_run_dir(m, s) for m in config.get("methods") or [] for s in config.get("seeds") or []]
    done = [r["run_dir"] for r in document.get("rows") or [] if isinstance(r, dict)]
    figures = list(_FIGURES) if document.get("complete") else []
    return [RESULTS_FILE, *sorted(set(plan) | {d for d in done if isinstance(d, str)}), *figures]


def _validate_results(document: dict[str, Any], path: Path) -> None:
    """Refuse a ``results.json`` whose structure ``--resume`` cannot continue, saying what is
    wrong."""

    def fail(what: str) -> None:
        raise InvalidInputError(
            f"--resume: {path}: {what}; it was not written by ttdecomp finetune or was edited. "
            "Start a new run in another --output (or with --overwrite)."
        )

    config = document.get("config")
    if not isinstance(config, dict):
        fail("'config' is missing or not an object")
    for key in ("identity", "settings"):
        if not isinstance(config.get(key), dict):
            fail(f"'config.{key}' is missing or not an object")
    rows = document.get("rows")
    if not isinstance(rows, list):
        fail("'rows' is missing or not a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            fail(f"rows[{i}] is a {type(row).__name__}, not an object")
        if not isinstance(row.get("method"), str):
            fail(f"rows[{i}] has no method name")
        seed = row.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            fail(f"rows[{i}] has seed {seed!r}; expected a non-negative integer")
        run_dir = row.get("run_dir")
        if run_dir is not None and run_dir != _run_dir(row["method"], seed):
            fail(f"rows[{i}] has run_dir {run_dir!r}; expected {_run_dir(row['method'], seed)!r}")
    if len({(r["method"], r["seed"]) for r in rows}) != len(rows):
        fail("a (method, seed) row appears twice")


def _check_resumable(
    previous: dict[str, Any], identity: dict, settings: dict, output: Path
) -> None:
    theirs = previous.get("config", {})
    diffs = [
        f"{k}: {theirs.get('identity', {}).get(k)!r} there, {v!r} here"
        for k, v in identity.items()
        if theirs.get("identity", {}).get(k) != v
    ]
    for method, mine in settings.items():
        old = theirs.get("settings", {}).get(method)
        if old is not None and old != mine:
            diffs.append(f"{method} settings: {old} there, {mine} here")
    if diffs:
        raise InvalidInputError(
            f"--resume: {output} was run with another configuration ("
            + "; ".join(diffs)
            + "). Use the same options, or another --output."
        )


def prepare_job(config: FinetuneConfig, *, progress: bool = False) -> tuple[Any, str, Path]:
    """Load and check the model, data and targets of ``config`` once: ``(job, task, model_path)``.

    ``job.run(settings, train, run_dir)`` is one (method, seed) run on the shared data (what
    :func:`finetune` loops over, in this process or in the worker processes of
    :class:`~ttdecomp.finetune.parallel.RunPool`, and what every trial of ``ttdecomp search``
    calls with ``on_evaluate=`` and ``final=False``); ``job.targets`` are the adapted layers,
    ``task`` is ``"classification"`` or ``"causal"``. Nothing is trained here.

    Examples
    --------
    >>> job, task, path = prepare_job(FinetuneConfig(quick=True))  # doctest: +SKIP
    >>> task, job.targets  # doctest: +SKIP
    ('classification', ['query', 'value'])
    """
    source = resolve_model(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        progress=progress,
    )
    model_path, model_task = source.path, source.task
    task = task_of(config.data, model_task)
    packaged = source.kind == "packaged"
    # a local causal LM can still be loaded as a sequence classifier (a new head); the
    # packaged models, and a classifier asked to generate, cannot switch
    if model_task != task and (packaged or task == "causal"):
        raise InvalidInputError(
            f"--model {config.model} is a {model_task} model but --data {config.data} is "
            f"{task} data; use --model minilm with classification data or --model smollm2 "
            "with --data chatterbot."
        )
    if task == "causal":
        from .causal import prepare_causal

        job = prepare_causal(config, model_path, progress=progress)
    else:
        job = _prepare_classification(config, model_path, progress=progress)
    return job, task, model_path


def finetune(
    config: FinetuneConfig | None = None,
    *,
    output: str | Path = "ttdecomp-finetune",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    echo: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    jobs: int | None = None,
    threads: int | None = None,
) -> FinetuneResult:
    """Fine-tune every method with every seed on one model and data set, and report.

    Parameters
    ----------
    config : FinetuneConfig, optional
        Defaults: MiniLM on the packaged tweets, TT-LoRA and LoRA, seed 0.
    output : path
        The run folder (see the module docstring).
    resume : bool
        Continue the run in ``output``: finished (method, seed) rows are kept, the rest run.
    overwrite : bool
        Replace the results of a previous run in ``output``.
    progress : bool
        tqdm bars for loading, training and evaluation.
    figures : bool
        Write the two PNG figures (needs matplotlib: ``pip install matplotlib``).
    echo : callable, optional
        Receives progress lines ("run 2/4: lora seed 0 ..."); default: nothing.
    should_stop : callable, optional
        Asked after every finished run; ``True`` raises ``KeyboardInterrupt`` there (the
        command's Ctrl-C handler uses it, since Python drops a ``KeyboardInterrupt`` that
        arrives inside a finalizer).
    jobs : int, optional
        Runs made at once, each in a process of its own
        (:mod:`~ttdecomp.finetune.parallel`); default: two at a time on a CPU with two or
        more cores (:func:`~ttdecomp.finetune.plan_jobs`), ``1`` for one after another. The
        rows are those of the same runs made one at a time with the same threads.
    threads : int, optional
        torch CPU threads per run. Default: torch's own setting for one run at a time, the
        cores shared out among ``jobs`` runs.

    Returns
    -------
    FinetuneResult

    Examples
    --------
    >>> result = finetune(FinetuneConfig(quick=True), output="out")  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
    """
    config = config or FinetuneConfig()
    say = echo or (lambda _line: None)
    output = Path(output)
    folder = OutputFolder(
        output, RESULTS_FILE, validate=_validate_results, legacy_files=_legacy_files
    )
    main = is_main_process()
    folder.prepare(resume=resume, overwrite=overwrite, probe=main)
    previous = folder.previous if resume else None
    resolve_device(config.device)
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                "the figures need matplotlib, which is not installed; run\n"
                "    pip install matplotlib\n"
                "or pass --no-figures."
            ) from None
    settings = config.method_settings()
    job, task, model_path = prepare_job(config, progress=progress)
    identity = {
        **config.identity(),
        "targets": list(job.targets),
        "task": task,
        "data_fingerprint": job.fingerprint,
    }
    settings_dict = {m: s.to_dict() for m, s in settings.items()}
    rows: list[dict[str, Any]] = []
    if previous is not None:
        _check_resumable(previous, identity, settings_dict, output)
        # every finished row is kept, also those of methods or seeds not asked for this time
        rows = list(previous["rows"])
        settings_dict = {**previous["config"].get("settings", {}), **settings_dict}
    elif main:
        folder.clear_previous()  # --overwrite: what the previous run recorded, nothing else
    if main:
        output.mkdir(parents=True, exist_ok=True)
    methods = list(config.methods) + sorted({r["method"] for r in rows} - set(config.methods))
    document = {
        "config": {
            "identity": identity,
            "settings": settings_dict,
            "methods": methods,
            "seeds": sorted({r["seed"] for r in rows} | set(config.seeds)),
            "device": config.device,
            "quick": config.quick,
            "model_path": str(model_path),
        },
        "versions": _versions(),
        "data": job.describe(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
    done = {(r["method"], r["seed"]) for r in rows}
    plan = [(m, s) for s in config.seeds for m in config.methods if (m, s) not in done]
    if done:
        say(f"resuming: {len(done)} finished run(s) kept, {len(plan)} to go")
    order = {key: i for i, key in enumerate(plan)}
    if main:
        # recorded before any is written, so that an interrupted run's folder is ours too
        folder.record(RESULTS_FILE)
        if plan:
            folder.mkdir("runs")
        for method, seed in plan:
            folder.claim(_run_dir(method, seed) + "/")
        document["files"] = folder.files
        write_json_atomic(output / RESULTS_FILE, document)

    def record(method: str, seed: int, row: dict[str, Any], run_dir: Path) -> None:
        row["run_dir"] = str(run_dir.relative_to(output))
        # finished rows first, the new ones in the order of the plan, however they finish
        kept = [r for r in rows if (r["method"], r["seed"]) not in order]
        new = sorted(
            [r for r in rows if (r["method"], r["seed"]) in order] + [row],
            key=lambda r: order[r["method"], r["seed"]],
        )
        rows[:] = kept + new
        document["rows"] = rows
        document["summary"] = summarize(rows, methods)
        if main:
            write_json_atomic(output / RESULTS_FILE, document)

    def fresh_run_dir(method: str, seed: int) -> Path:
        if main:  # a run interrupted earlier starts over
            return folder.fresh(_run_dir(method, seed))
        return output / _run_dir(method, seed)

    jobs, threads = plan_jobs(
        len(plan), jobs=jobs, threads=threads, device=config.device, world_size=world_size()
    )
    if jobs == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        for i, (method, seed) in enumerate(plan, 1):
            run_dir = fresh_run_dir(method, seed)
            say(f"run {i}/{len(plan)}: {method}, seed {seed}")
            train = config.train_settings(seed, progress=progress, method=method)
            record(method, seed, job.run(settings[method], train, run_dir), run_dir)
            if should_stop is not None and should_stop() and i < len(plan):
                raise KeyboardInterrupt
    else:
        say(f"{len(plan)} runs, {jobs} at a time ({threads} torch thread(s) each)")
        with RunPool(config, jobs, threads, on_killed=say) as pool:
            for method, seed in plan:
                run_dir = fresh_run_dir(method, seed)
                pool.submit(
                    (method, seed),
                    settings[method],
                    config.train_settings(seed, progress=progress, method=method),
                    run_dir,
                )
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(plan), desc="runs", unit="run", position=0)
            try:
                for i, ((method, seed), row) in enumerate(pool.results(), 1):
                    record(method, seed, row, output / "runs" / f"{method}-seed{seed}")
                    if bar is not None:
                        bar.update()
                    say(f"run {i}/{len(plan)} finished: {method}, seed {seed}{_scores(row)}")
                    if should_stop is not None and should_stop() and i < len(plan):
                        raise KeyboardInterrupt
            finally:
                if bar is not None:
                    bar.close()
    summary = summarize(rows, methods)
    document["summary"] = summary
    document["complete"] = True
    figure_paths: list[Path] = []
    if main:
        if figures:
            figure_paths = write_figures(rows, summary, output, task)
            for path in figure_paths:
                folder.record(path.name)
            document["files"] = folder.files
        if task == "causal" and hasattr(job, "finalize"):
            job.finalize(document)
        write_json_atomic(output / RESULTS_FILE, document)
    table = format_table(summary, task)
    return FinetuneResult(rows, summary, table, output, figure_paths)


def _scores(row: Mapping[str, Any]) -> str:
    """`` (validation 91.0%, test 90.5%)`` for a finished row, or its losses (causal LMs)."""
    parts = []
    for name, label in (("val_accuracy", "validation"), ("test_accuracy", "test")):
        if isinstance(row.get(name), (int, float)):
            parts.append(f"{label} {100 * row[name]:.1f}%")
    for name, label in (("val_loss", "validation loss"), ("test_loss", "test loss")):
        if not parts and isinstance(row.get(name), (int, float)):
            parts.append(f"{label} {row[name]:.3f}")
    return f" ({', '.join(parts)})" if parts else ""


@dataclass
class _ClassificationJob:
    """Data and tokenizer loaded once, shared by every run of a classification comparison."""

    config: FinetuneConfig
    model_path: Path
    splits: Any
    tokenizer: Any
    datasets: dict[str, Any]
    targets: list[str]

    @property
    def fingerprint(self) -> str:
        return self.splits.fingerprint()

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.splits.source,
            "labels": self.splits.labels,
            "sizes": self.splits.sizes(),
            "cleaning": self.splits.stats,
            "fingerprint": self.fingerprint,
            "targets": self.targets,
        }

    def run(
        self, settings: MethodSettings, train: TrainSettings, run_dir: Path, **options: Any
    ) -> dict:
        """One (method, seed) row (``options``: ``on_evaluate``, ``final``)."""
        from .classify import run_classification

        return run_classification(
            model_dir=self.model_path,
            tokenizer=self.tokenizer,
            splits=self.splits,
            settings=settings,
            train=train,
            targets=self.targets,
            max_length=self.config.max_length,
            run_dir=run_dir,
            datasets=self.datasets,
            quantization_config=self.config.quantization_config(),
            **options,
        )


def _prepare_classification(
    config: FinetuneConfig, model_path: Path, *, progress: bool
) -> _ClassificationJob:
    """Load and check everything a classification comparison needs, before any training."""
    from transformers import AutoConfig

    from ..assets.loader import check_tokenizer, load_tokenizer
    from .classify import TextDataset
    from .config import QUICK
    from .data import load_classification
    from .methods import dry_run

    quick_rows = sum(QUICK["classification"]["sizes"]) if config.quick else None
    splits = load_classification(
        config.data,
        sizes=config.sizes,
        text_column=config.text_column,
        label_column=config.label_column,
        config=config.data_config,
        max_examples=quick_rows,
    )
    try:
        model_config = AutoConfig.from_pretrained(
            str(model_path), trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot load the model config in {model_path}: {exc}") from None
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
    check_tokenizer(tokenizer, [t for t, _ in splits.train], source=splits.source)
    targets = list(config.targets or _DEFAULT_TARGETS.get(model_config.model_type, []))
    if not targets:
        raise InvalidInputError(
            f"no default targets for model type {model_config.model_type!r}; name the query and "
            "value projections with --targets (e.g. q_proj,v_proj)."
        )
    model_config.num_labels = len(splits.labels)
    dry_run(model_config, config.method_settings(), targets=targets)
    iterator = [("train", splits.train), ("validation", splits.validation), ("test", splits.test)]
    if progress and is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="tokenizing", unit="split", leave=False)
    # evaluation splits longest first (little padding per batch); test logits are saved in
    # row order all the same (TextDataset.in_row_order)
    datasets = {
        name: TextDataset(rows, tokenizer, config.max_length, sort_by_length=name != "train")
        for name, rows in iterator
    }
    return _ClassificationJob(config, model_path, splits, tokenizer, datasets, targets)
