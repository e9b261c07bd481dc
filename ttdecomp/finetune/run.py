"""``ttdecomp finetune`` as a function: every (method, seed) run, resumable, with its report.

:func:`finetune` validates everything before any training (model, data, methods, settings,
targets, the output folder), then runs the methods × seeds one after the other. After each
finished run its row is added to ``results.json`` (rewritten atomically) together with its saved
adapter, so an interrupt or a crash loses at most the run in progress; ``resume=True`` skips the
finished rows and refuses a folder written with another configuration.

Output folder::

    results.json                 config, package versions, data statistics, rows, summary
    runs/<method>-seed<k>/       adapter/ (reloadable), test_logits.safetensors
    runs/<method>-seed<k>/trainer/train_log.jsonl   the run's loss, learning rate and step
                                 time at every step
    accuracy_vs_params.png       test accuracy against adapter parameters (log axis)
    validation_curves.png        validation accuracy per epoch per method
    loss_curves.png              training loss per step per method

Before any training, a start banner (through ``echo``) says the device and dtype, the model,
the examples per split, epochs, steps and global batch, and each method's trainable
parameters. ``results.json``'s ``config.options`` holds every option as resolved
(:meth:`FinetuneConfig.to_dict`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..assets.loader import load_tokenizer, resolve_model
from ..errors import InvalidInputError
from ..runs.folder import OutputFolder
from .config import FinetuneConfig
from .methods import load_adapted
from .parallel import RunPool, plan_jobs
from .quantization import QUANTIZE, quantization_config
from .report import (
    RESULTS_FILE,
    format_table,
    load_results,
    summarize,
    write_figures,
    write_json_atomic,
)
from .tasks import check_pairing, get_task
from .tasks.causal_lm import load_causal
from .tasks.classification import load_classifier
from .train import (
    TRAIN_LOG,
    is_main_process,
    resolve_device,
    resolve_precision,
    world_size,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "load_finetuned", "prepare_job"]

_FIGURES = ("accuracy_vs_params.png", "validation_curves.png")


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

    ``job`` follows the :class:`~ttdecomp.finetune.tasks.Job` protocol:
    ``job.run(settings, train, run_dir)`` is one (method, seed) run on the shared data (what
    :func:`finetune` loops over, in this process or in the worker processes of
    :class:`~ttdecomp.finetune.parallel.RunPool`, and what every trial of ``ttdecomp search``
    calls with ``on_evaluate=`` and ``final=False``); ``job.targets`` are the adapted layers,
    ``task`` is the registered task's name (``config.task``). Nothing is trained here.

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
    task = get_task(config.task)
    check_pairing(config.model, config.data, get_task(source.task), task, source.kind == "packaged")
    job = task.prepare(config, source.path, progress=progress)
    return job, task.name, source.path


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
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidInputError(
                "the figures need matplotlib, which is not installed; run\n"
                "    pip install matplotlib\n"
                "or pass --no-figures."
            ) from None
    job, task, model_path = prepare_job(config, progress=progress)
    settings = job.settings or config.method_settings()  # a matched rank derived
    for line in start_banner(config, job, task, device, precision):
        say(line)
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
            "device": device,
            "precision": precision,
            "quick": config.quick,
            "model_path": str(model_path),
            # how the frozen base is stored (quantized on load or saved quantized); None: full
            "base": getattr(job, "base", None),
            "options": config.to_dict(),
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
        if (run_dir / "trainer" / TRAIN_LOG).is_file():
            row["train_log"] = str((run_dir / "trainer" / TRAIN_LOG).relative_to(output))
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
        len(plan), jobs=jobs, threads=threads, device=device, world_size=world_size()
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
                    scores = get_task(task).scores(row)
                    say(f"run {i}/{len(plan)} finished: {method}, seed {seed}{scores}")
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
        get_task(task).finalize(job, document)
        write_json_atomic(output / RESULTS_FILE, document)
    table = format_table(summary, task)
    return FinetuneResult(rows, summary, table, output, figure_paths)


def start_banner(
    config: FinetuneConfig, job: Any, task: str, device: str, precision: str
) -> list[str]:
    """The lines said before any training: where it runs, on what, how long, how many weights.

    Examples
    --------
    >>> job = type("Job", (), {"describe": lambda self: {"sizes": {"train": 64, "validation": 8,
    ...     "test": 8}}, "targets": ["query"], "trainable": {"lora": {"adapter": 96,
    ...     "extra": 10}}})()
    >>> config = FinetuneConfig(methods=["lora"], epochs=2, batch_size=16)
    >>> for line in start_banner(config, job, "classification", "cpu", "fp32"):
    ...     print(line)
    device cpu, dtype fp32, 1 process(es); model minilm (classification)
    data tweets: 64 train / 8 validation / 8 test examples; targets query
    training: 2 epoch(s) x 4 steps = 8 steps per run, global batch 16; 1 run(s): lora x seeds 0
    trainable parameters: lora 96 adapter + 10 other
    """
    sizes = job.describe().get("sizes") or {}
    base = getattr(job, "base", None)  # how the frozen base is stored, when quantized
    lines = [
        f"device {device}, dtype {precision}, {world_size()} process(es); model {config.model} "
        f"({task})" + (f"; base {base}" if base else ""),
        f"data {config.data}: "
        + " / ".join(f"{n} {name}" for name, n in sizes.items())
        + f" examples; targets {', '.join(job.targets)}",
    ]
    per_epoch = math.ceil(sizes.get("train", 0) / config.batch_size)
    if config.max_steps:
        length = f"{config.max_steps} steps"
    else:
        length = f"{config.epochs} epoch(s) x {per_epoch} steps = {config.epochs * per_epoch} steps"
    lines.append(
        f"training: {length} per run, global batch {config.batch_size}; "
        f"{len(config.methods) * len(config.seeds)} run(s): {', '.join(config.methods)} x "
        f"seeds {','.join(map(str, config.seeds))}"
    )
    trainable = getattr(job, "trainable", None)
    if trainable:
        lines.append(
            "trainable parameters: "
            + "; ".join(
                f"{m} {c['adapter']:,} adapter + {c['extra']:,} other" for m, c in trainable.items()
            )
        )
    return lines


def load_finetuned(
    output: str | os.PathLike,
    method: str,
    seed: int = 0,
    *,
    model: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Reload the model a ``ttdecomp finetune`` run trained: ``(model, tokenizer)``, eval mode.

    The base model is loaded fresh, as the run loaded it (a classifier with the run's labels
    or a causal LM; quantized as ``--quantize`` said, or as saved), and the run's saved adapter
    (with its head) is put on it; its predictions equal the run's (a classification run's test
    logits are in ``runs/<method>-seed<k>/test_logits.safetensors``). A causal LM's tokenizer
    comes with a pad token (its end-of-sequence token where it has none). Paths in
    ``results.json`` are followed only inside ``output``: the adapter must be the run's own
    ``runs/<method>-seed<k>``, and the base model is the packaged model the run names, or
    ``model`` (a folder or Hub id you trust) for any other; a recorded base-model path outside
    ``output`` is never followed.

    Examples
    --------
    >>> model, tokenizer = load_finetuned("ttdecomp-finetune", "tt-lora")  # doctest: +SKIP
    >>> batch = tokenizer(["what a ride!"], return_tensors="pt")  # doctest: +SKIP
    >>> model(**batch).logits.argmax(-1)  # doctest: +SKIP
    """
    from ..assets import registry as assets

    results = load_results(output)
    root = Path(output).resolve()
    where = Path(output) / RESULTS_FILE
    rows = [r for r in results["rows"] if r.get("method") == method and r.get("seed") == seed]
    if not rows:
        have = sorted(f"{r.get('method')} seed {r.get('seed')}" for r in results["rows"])
        raise InvalidInputError(
            f"{output} has no finished run of {method} with seed {seed}; it has {have}."
        )
    run_dir = rows[0].get("run_dir")
    expected = f"runs/{method}-seed{seed}"
    adapter = (Path(output) / str(run_dir) / "adapter").resolve()
    if run_dir != expected or not adapter.is_relative_to(root):
        raise InvalidInputError(
            f"{where} records run_dir {run_dir!r} for {method} seed {seed}; expected "
            f"{expected!r} inside {output}. ttdecomp follows no path out of the run folder; the "
            "file was edited or not written by ttdecomp."
        )
    if model is None:
        name = (results.get("config") or {}).get("identity", {}).get("model")
        key = assets.canonical_model_name(name) if isinstance(name, str) else None
        recorded = (results.get("config") or {}).get("model_path")
        hub_folder = f"models--{name.replace('/', '--')}" if isinstance(name, str) else None
        if key is not None:
            model = name  # the packaged model, resolved (and assembled) as the run did
        elif isinstance(recorded, str) and hub_folder in Path(recorded).parts:
            # a Hub id at the commit the run used (the snapshot's name), from the Hub cache
            model = resolve_model(name, revision=Path(recorded).name)
        else:
            if not isinstance(recorded, str) or not (
                (Path(output) / recorded).resolve().is_relative_to(root)
            ):
                raise InvalidInputError(
                    f"{where} records the base model at {recorded!r}, outside the run folder; "
                    "ttdecomp does not follow paths out of a run folder it reads. Pass the base "
                    f"model yourself: load_finetuned({str(output)!r}, {method!r}, {seed}, "
                    f"model={recorded!r})."
                )
            model = Path(output) / recorded
    config = results.get("config") or {}
    options = config.get("options") or {}
    task = (config.get("identity") or {}).get("task") or options.get("task") or "classification"
    quantize = options.get("quantize") or "none"
    if task not in ("classification", "causal") or quantize not in QUANTIZE:
        raise InvalidInputError(
            f"{where} records task {task!r} and quantize {quantize!r}; expected a task of "
            f"classification, causal and a quantize of {', '.join(QUANTIZE)}. The file was "
            "edited or not written by ttdecomp."
        )
    # the base as the run loaded it: quantized the same way (a base saved quantized loads as
    # saved whatever this says)
    quantization = quantization_config(
        quantize,
        task=task,
        bnb_4bit_quant_type=options.get("bnb_4bit_quant_type") or "nf4",
        bnb_4bit_compute_dtype=options.get("bnb_4bit_compute_dtype") or "float32",
    )
    if task == "classification":
        net = load_classifier(
            model, results["data"]["labels"], seed, quantization_config=quantization
        )
    else:
        net = load_causal(model, seed, quantization_config=quantization)
    net = load_adapted(net, adapter)
    return net, load_tokenizer(model, pad_with_eos=task == "causal")
