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
import json
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InvalidInputError
from . import assets
from .methods import DEFAULT_METHODS, METHODS, MethodSettings, check_method, default_settings
from .parallel import RunPool, plan_jobs
from .report import (
    RESULTS_FILE,
    format_table,
    load_results,
    summarize,
    write_figures,
    write_json_atomic,
)
from .train import TrainSettings, is_main_process, resolve_device, world_size

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune"]

#: Defaults per task, and those of ``--quick`` (an end-to-end check in about a minute on 2
#: cores). Causal LMs: ``sizes`` None splits the dialogues 80/10/10%, one epoch of batch 8.
DEFAULTS = {
    "classification": {"sizes": (1000, 300, 600), "epochs": 4, "max_steps": None,
                       "max_length": 48, "batch_size": 32},
    "causal": {"sizes": None, "epochs": 1, "max_steps": None, "max_length": 128,
               "batch_size": 8},
}  # fmt: skip
QUICK = {
    "classification": {"sizes": (320, 100, 200), "epochs": 3, "max_steps": None,
                       "max_length": 32, "batch_size": 32},
    "causal": {"sizes": (64, 16, 16), "epochs": 1, "max_steps": 8, "max_length": 64,
               "batch_size": 8},
}  # fmt: skip
_OWN_FILES = (RESULTS_FILE, "runs", "accuracy_vs_params.png", "validation_curves.png")
_DEFAULT_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"]}


@dataclass
class FinetuneConfig:
    """Everything that defines a fine-tuning comparison (``ttdecomp finetune``'s options).

    Parameters
    ----------
    model : str
        A packaged model (``minilm``, ``smollm2``) or the path of a local Hugging Face folder.
    data : str
        A packaged data set (``tweets``, ``chatterbot``), a CSV/JSONL file with ``text`` and
        ``label`` columns, or a folder saved by 🤗 ``datasets``.
    methods : sequence of str
        From :data:`~ttdecomp.finetune.methods.METHODS`; default ``tt-lora`` and ``lora``.
    seeds : sequence of int
        One run per seed and method; the table shows mean ± std over seeds.
    rank, alpha, lr : value or dict of method to value, optional
        Override the methods' defaults: one value for every method that has the setting, or a
        dict per method (``{"tt-lora": 5e-3, "lora": 1e-3}``).
    tt_shape : sequence of int, optional
        TT-LoRA's flat shape (input factors then output factors) for every target.
    epochs, max_steps, batch_size, max_length, eval_every, weight_decay
        Training (see :class:`~ttdecomp.finetune.train.TrainSettings`); ``max_length`` in tokens.
    targets : sequence of str, optional
        Target modules; default: the query and value projections of the model.
    sizes : (int, int, int)
        Train / validation / test sizes when the data is split here.
    device : str
        ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``.
    quick : bool
        The fast end-to-end check: sizes, epochs and length from :data:`QUICK` unless given.

    Examples
    --------
    >>> FinetuneConfig(lr={"tt-lora": 1e-2}).method_settings()["tt-lora"].lr
    0.01
    """

    model: str = "minilm"
    data: str = "tweets"
    methods: Sequence[str] = DEFAULT_METHODS
    seeds: Sequence[int] = (0,)
    rank: Any = None
    alpha: Any = None
    lr: Any = None
    tt_shape: Sequence[int] | None = None
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None
    eval_every: int | None = None
    weight_decay: float = 0.01
    targets: Sequence[str] | None = None
    sizes: tuple[int, int, int] | None = None
    device: str = "cpu"
    quick: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            self.methods = [m for m in self.methods.split(",") if m]
        self.methods = [check_method(m) for m in self.methods]
        if not self.methods:
            raise InvalidInputError("no methods given; expected e.g. tt-lora,lora (--methods).")
        if len(set(self.methods)) != len(self.methods):
            raise InvalidInputError(f"methods {self.methods} lists a method twice (--methods).")
        seeds = list(self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise InvalidInputError(
                f"seeds must be non-negative integers, e.g. 0,1,2; got {self.seeds!r} (--seeds)."
            )
        if len(set(seeds)) != len(seeds):
            raise InvalidInputError(f"seeds {seeds} lists a seed twice (--seeds).")
        self.seeds = seeds
        defaults = (QUICK if self.quick else DEFAULTS)[self.task]
        given_steps = self.max_steps is not None or self.epochs is not None
        for name, value in defaults.items():
            if getattr(self, name) is None and not (name == "max_steps" and given_steps):
                setattr(self, name, value)
        if self.sizes is not None:
            sizes = tuple(self.sizes)
            if len(sizes) != 3:
                raise InvalidInputError(f"sizes must be (train, validation, test); got {sizes}.")
            if any(v is None for v in sizes):
                if defaults["sizes"] is None:
                    raise InvalidInputError(
                        "dialogue data is split 80/10/10% unless all three sizes are given; "
                        "give --train-size, --val-size and --test-size together."
                    )
                sizes = tuple(d if v is None else v for v, d in zip(sizes, defaults["sizes"]))
            self.sizes = sizes
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or not 2 <= self.max_length <= 8192
        ):
            raise InvalidInputError(
                f"max_length must be an integer in [2, 8192] tokens; got {self.max_length!r} "
                "(--max-length)."
            )
        if self.targets is not None:
            self.targets = [t for t in self.targets if t]
            if not self.targets:
                raise InvalidInputError("targets is empty; give module names (--targets).")
        if self.tt_shape is not None:
            self.tt_shape = [int(s) for s in self.tt_shape]
        self.method_settings()  # validates rank/alpha/lr/tt_shape for every method
        self.train_settings(self.seeds[0])

    @property
    def task(self) -> str:
        """``"causal"`` for dialogue data (``chatterbot``, a JSONL of prompt/reply or messages
        lines) or the packaged SmolLM2 on data of its own, else ``"classification"``."""
        return _task_hint(self.model, self.data)

    def _override(self, value: Any, method: str, name: str) -> Any:
        if not isinstance(value, Mapping):
            return value
        unknown = sorted(set(value) - set(METHODS))
        if unknown:
            raise InvalidInputError(
                f"{name} names unknown methods {unknown}; expected some of {', '.join(METHODS)}."
            )
        not_run = sorted(set(value) - set(self.methods))
        if not_run:
            raise InvalidInputError(
                f"{name} is given for {not_run}, which are not among the methods run "
                f"({', '.join(self.methods)}); add them to --methods or drop the setting."
            )
        return value.get(method)

    def method_settings(self) -> dict[str, MethodSettings]:
        """The validated settings of every method (defaults with the overrides applied)."""
        out = {}
        for method in self.methods:
            base = default_settings(method)
            overrides: dict[str, Any] = {}
            for name in ("rank", "alpha", "lr"):
                value = self._override(getattr(self, name), method, name)
                if value is None:
                    continue
                if getattr(base, name) is None and not isinstance(getattr(self, name), Mapping):
                    continue  # one value for all: only the methods that have the setting
                overrides[name] = value
            if self.tt_shape is not None and method == "tt-lora":
                overrides["tt_shape"] = tuple(self.tt_shape)
            out[method] = default_settings(method, **overrides)
        if self.tt_shape is not None and "tt-lora" not in self.methods:
            raise InvalidInputError(
                "--tt-shape is a TT-LoRA setting, but tt-lora is not among the methods run."
            )
        return out

    def train_settings(self, seed: int, *, progress: bool = False) -> TrainSettings:
        """Training settings of one run (the learning rate is each method's own)."""
        return TrainSettings(
            lr=1e-3,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            seed=seed,
            device=self.device,
            eval_every=self.eval_every,
            eval_batch_size=self.batch_size if self.task == "causal" else None,
            progress=progress,
        )

    def identity(self) -> dict[str, Any]:
        """What must match for ``--resume`` to reuse finished rows (not methods or seeds)."""
        return {
            "model": self.model,
            "data": self.data,
            "sizes": list(self.sizes) if self.sizes is not None else None,
            "epochs": self.epochs if self.max_steps is None else None,
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "eval_every": self.eval_every,
            "weight_decay": self.weight_decay,
            "targets": list(self.targets) if self.targets is not None else None,
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


def _prepare_output(output: Path, resume: bool, overwrite: bool) -> list[dict[str, Any]] | None:
    """Check the output folder; return the previous results when resuming."""
    if resume and overwrite:
        raise InvalidInputError("--resume and --overwrite contradict each other; choose one.")
    if output.exists() and not output.is_dir():
        raise InvalidInputError(f"--output {output} is a file; give a folder.")
    if resume:
        if not (output / RESULTS_FILE).exists():
            raise InvalidInputError(
                f"--resume: {output} holds no {RESULTS_FILE}; nothing to resume. Drop --resume "
                "to start a new run there."
            )
        return [load_results(output)]
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise InvalidInputError(
                f"--output {output} exists and is not empty; pass --overwrite to replace its "
                "results, --resume to continue the run in it, or choose another folder."
            )
    return None


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


def _resolve_model(name: str) -> tuple[Path, str]:
    """The model folder (or GGUF file) and its task: ``classification`` or ``causal``."""
    key = assets.canonical_model_name(name)
    if key is not None:
        return assets.model_path(key), assets.MODELS[key].task
    path = Path(name)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise InvalidInputError(
            f"unknown model {name!r}: not a packaged model ({', '.join(assets.MODELS)}) and not "
            "a local Hugging Face folder with a config.json (--model)."
        )
    try:
        architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise InvalidInputError(f"{path / 'config.json'} is not a valid JSON config.") from None
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    return path, "causal" if causal else "classification"


def _task_of(data: str, model_task: str) -> str:
    """A packaged data set has its task; dialogue files are causal; other data takes the
    model's."""
    if data in assets.DATA or data.startswith("chatterbot:"):
        return assets.DATA[data.partition(":")[0]].task
    if _is_dialogue_file(data):
        return "causal"
    return model_task


def _is_dialogue_file(data: str) -> bool:
    """A ``.jsonl`` file whose first record has ``messages`` or ``prompt`` (not ``text``)."""
    path = Path(data)
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        record = json.loads(first) if first else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and ("messages" in record or "prompt" in record)


def _task_hint(model: str, data: str) -> str:
    """The task before anything is loaded (for the defaults of :class:`FinetuneConfig`)."""
    task = _task_of(data, "classification")
    if task == "classification" and data not in assets.DATA:
        key = assets.canonical_model_name(model)
        if key is not None and assets.MODELS[key].task == "causal":
            return "causal"
    return task


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
    model_path, model_task = _resolve_model(config.model)
    task = _task_of(config.data, model_task)
    packaged = assets.canonical_model_name(config.model) is not None
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
        (:mod:`~ttdecomp.finetune.parallel`); default one at a time. The rows are the same
        either way.
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
    previous = _prepare_output(output, resume, overwrite)
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
        _check_resumable(previous[0], identity, settings_dict, output)
        # every finished row is kept, also those of methods or seeds not asked for this time
        rows = list(previous[0]["rows"])
        settings_dict = {**previous[0]["config"].get("settings", {}), **settings_dict}
    elif is_main_process() and output.exists():
        for name in _OWN_FILES:
            target = output / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if is_main_process():
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
        if is_main_process():
            write_json_atomic(output / RESULTS_FILE, document)

    def fresh_run_dir(method: str, seed: int) -> Path:
        run_dir = output / "runs" / f"{method}-seed{seed}"
        if is_main_process() and run_dir.exists():
            shutil.rmtree(run_dir)  # a run interrupted earlier starts over
        return run_dir

    jobs, threads = plan_jobs(
        len(plan), jobs=jobs, threads=threads, device=config.device, world_size=world_size()
    )
    if jobs == 1:
        if threads is not None:
            torch.set_num_threads(threads)
        for i, (method, seed) in enumerate(plan, 1):
            run_dir = fresh_run_dir(method, seed)
            say(f"run {i}/{len(plan)}: {method}, seed {seed}")
            train = config.train_settings(seed, progress=progress)
            record(method, seed, job.run(settings[method], train, run_dir), run_dir)
            if should_stop is not None and should_stop() and i < len(plan):
                raise KeyboardInterrupt
    else:
        say(f"{len(plan)} runs, {jobs} at a time ({threads} torch thread(s) each)")
        with RunPool("ttdecomp.finetune.run:prepare_job", config, jobs, threads) as pool:
            for method, seed in plan:
                run_dir = fresh_run_dir(method, seed)
                pool.submit(
                    (method, seed),
                    settings[method],
                    config.train_settings(seed, progress=progress),
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
    if is_main_process():
        if figures:
            figure_paths = write_figures(rows, summary, output, task)
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
            **options,
        )


def _prepare_classification(
    config: FinetuneConfig, model_path: Path, *, progress: bool
) -> _ClassificationJob:
    """Load and check everything a classification comparison needs, before any training."""
    from transformers import AutoConfig, AutoTokenizer

    from .classify import TextDataset
    from .data import load_classification
    from .methods import dry_run

    splits = load_classification(config.data, sizes=config.sizes)
    try:
        model_config = AutoConfig.from_pretrained(str(model_path))
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(
            f"cannot load the model or tokenizer in {model_path}: {exc}"
        ) from None
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
