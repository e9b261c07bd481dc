"""One (method, seed) run of sequence classification: load, adapt, :func:`fit`, test once, save.

The row a run returns is what the report tabulates: adapter and extra parameters, validation
accuracy of the chosen state, test accuracy of that same state (test is evaluated once, after
training), the validation history, timings and memory. The run folder receives the adapter
(:func:`~ttdecomp.finetune.methods.save_adapted`) and the test logits, so a reloaded adapter can
be checked against what the run predicted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._files import write_with
from ..assets.loader import ModelSource, load_pretrained, load_tokenizer, resolve_model
from ..errors import InvalidInputError
from .data import Splits
from .methods import MethodSettings, apply_method, save_adapted
from .train import TrainSettings, fit, is_main_process, resolve_device

__all__ = ["TextDataset", "accuracy", "load_classifier", "predict_logits", "run_classification"]

LOGITS_FILE = "test_logits.safetensors"


class TextDataset(torch.utils.data.Dataset):
    """Tokenised ``(text, label)`` pairs (no padding: the collator pads each batch).

    With ``sort_by_length=True`` (what evaluation splits use) the examples are stored longest
    first, so that consecutive evaluation batches pad little; ``order[i]`` is the row of
    ``rows`` that example ``i`` came from, and :meth:`in_row_order` puts per-example results
    back in the order of ``rows``.

    Examples
    --------
    A stand-in tokenizer that makes one token per word:

    >>> def words(texts, truncation, max_length):
    ...     return {"input_ids": [t.split()[:max_length] for t in texts]}
    >>> ds = TextDataset([("a", 0), ("a b c", 1), ("a b", 0)], words, 16, sort_by_length=True)
    >>> ds.order, ds[0]["labels"]
    ([1, 2, 0], 1)
    >>> ds.in_row_order(np.array([10, 20, 30])).tolist()
    [30, 10, 20]
    """

    def __init__(
        self,
        rows: list[tuple[str, int]],
        tokenizer: Any,
        max_length: int,
        *,
        sort_by_length: bool = False,
    ) -> None:
        texts = [t for t, _ in rows]
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        features = [
            {**{k: enc[k][i] for k in enc}, "labels": int(rows[i][1])} for i in range(len(rows))
        ]
        self.order = list(range(len(rows)))
        if sort_by_length:
            # longest first, ties in row order: deterministic
            self.order.sort(key=lambda i: -len(features[i]["input_ids"]))
        self.features = [features[i] for i in self.order]

    def in_row_order(self, values: np.ndarray) -> np.ndarray:
        """``values`` (one per stored example, first axis) rearranged to the order of the rows."""
        values = np.asarray(values)
        if values.shape[0] != len(self.order):
            raise InvalidInputError(
                f"expected {len(self.order)} values, one per example; got {values.shape[0]}."
            )
        out = np.empty_like(values)
        out[self.order] = values
        return out

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def accuracy(eval_pred: Any) -> dict[str, float]:
    """``compute_metrics`` for ``Trainer``: the fraction of argmax predictions that are right.

    Examples
    --------
    >>> accuracy((np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])))
    {'accuracy': 0.5}
    """
    logits, labels = eval_pred
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


def load_classifier(
    model_dir: str | os.PathLike | ModelSource,
    labels: list[str],
    seed: int,
    *,
    quantization_config: Any = None,
    device: str | None = None,
) -> Any:
    """A sequence classifier from ``model_dir`` with a new head for ``labels``, seeded.

    :func:`ttdecomp.assets.load_pretrained` with ``task="classification"``: a clear error for a
    folder that holds no model, and for a model still carrying the GGUF loader's quantizer
    state (``Trainer`` refuses to train it). ``quantization_config`` loads the base quantized
    (``--quantize``), on ``device``.
    """
    return load_pretrained(
        model_dir,
        task="classification",
        labels=list(labels),
        seed=seed,
        quantization_config=quantization_config,
        device=device if quantization_config is not None else None,
    )


def predict_logits(model: Any, dataset: TextDataset, collator: Any, batch: int = 64) -> np.ndarray:
    """Logits of ``model`` on every example of ``dataset``, in order, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            inputs = collator(items)
            inputs.pop("labels", None)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            out.append(model(**inputs).logits.float().cpu().numpy())
    return np.concatenate(out)


def run_classification(
    *,
    model_dir: str | os.PathLike,
    tokenizer: Any,
    splits: Splits,
    settings: MethodSettings,
    train: TrainSettings,
    targets: list[str],
    max_length: int,
    run_dir: str | os.PathLike,
    datasets: dict[str, TextDataset] | None = None,
    on_evaluate: Any = None,
    final: bool = True,
    quantization_config: Any = None,
) -> dict[str, Any]:
    """Fine-tune one method with one seed and return its row.

    Parameters
    ----------
    model_dir : path
        The pretrained model's folder (loaded fresh for this run).
    tokenizer : transformers tokenizer
    splits : Splits
    settings : MethodSettings
    train : TrainSettings
        ``train.lr`` is ignored: ``settings.lr`` is the method's learning rate.
    targets : list of str
        Target modules of the adapter.
    max_length : int
        Tokens per text (longer texts are truncated).
    run_dir : path
        The row's folder: ``adapter/`` and ``test_logits.safetensors`` are written there.
    datasets : dict, optional
        Tokenised ``train``/``validation``/``test`` datasets to reuse across runs.
    on_evaluate : callable, optional
        Passed to :func:`~ttdecomp.finetune.train.fit`: called with every validation entry (a
        search reports to its pruner there, and may stop the run by raising).
    final : bool
        ``False`` for a search trial: test is not evaluated (``test_accuracy`` is ``None``)
        and nothing is saved; the row's validation figures are complete.
    quantization_config : transformers quantization config, optional
        Load the base quantized (``FinetuneConfig.quantization_config()``); the method trains
        beside the frozen quantized base.

    Returns
    -------
    dict
        ``method``, ``seed``, parameter counts, ``val_accuracy``, ``test_accuracy``,
        ``best_epoch``, ``history``, ``train_seconds``, ``step_seconds``,
        ``peak_step_bytes``, ``settings``.
    """
    from dataclasses import replace

    from transformers import DataCollatorWithPadding

    run_dir = Path(run_dir)
    if datasets is None:
        datasets = {
            name: TextDataset(
                getattr(splits, name), tokenizer, max_length, sort_by_length=name != "train"
            )
            for name in ("train", "validation", "test")
        }
    collator = DataCollatorWithPadding(tokenizer)
    model = load_classifier(
        model_dir,
        splits.labels,
        train.seed,
        quantization_config=quantization_config,
        device=resolve_device(train.device),
    )
    adapted = apply_method(model, settings, targets=targets, task="classification")
    trainer, result = fit(
        adapted,
        datasets["train"],
        datasets["validation"],
        collator=collator,
        settings=replace(train, lr=settings.lr),
        selection="accuracy",
        output_dir=run_dir / "trainer",
        compute_metrics=accuracy,
        on_evaluate=on_evaluate,
    )
    test_acc = None
    if final:
        prediction = trainer.predict(datasets["test"])  # once, on the validation-chosen state
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        test_acc = float((np.asarray(logits).argmax(-1) == prediction.label_ids).mean())
        # saved in the order of the test split's rows, whatever order evaluation ran in
        logits = datasets["test"].in_row_order(logits)
    if final and is_main_process():
        from safetensors.numpy import save_file

        save_adapted(adapted, run_dir / "adapter")
        tensors = {"logits": np.ascontiguousarray(logits, dtype=np.float32)}
        write_with(run_dir / LOGITS_FILE, lambda tmp: save_file(tensors, str(tmp)))
    return {
        "method": settings.method,
        "seed": train.seed,
        "adapter_params": adapted.adapter_params,
        "extra_params": adapted.extra_params,
        "val_accuracy": result.best["val_accuracy"],
        "test_accuracy": test_acc,
        "best_epoch": result.best["epoch"],
        "best_step": result.best["step"],
        "steps": result.steps,
        "history": result.history,
        "train_seconds": result.train_seconds,
        "step_seconds": result.step_seconds,
        "peak_step_bytes": result.peak_step_bytes,
        "settings": settings.to_dict(),
    }


def load_finetuned(
    output: str | os.PathLike,
    method: str,
    seed: int = 0,
    *,
    model: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """Reload the model a ``ttdecomp finetune`` run trained: ``(model, tokenizer)``, eval mode.

    The base model is loaded fresh and the run's saved adapter (with its head) is put on it;
    its predictions equal the run's (the run's test logits are in
    ``runs/<method>-seed<k>/test_logits.safetensors``). Paths in ``results.json`` are followed
    only inside ``output``: the adapter must be the run's own ``runs/<method>-seed<k>``, and
    the base model is the packaged model the run names, or ``model`` (a folder or Hub id you
    trust) for any other; a recorded base-model path outside ``output`` is never followed.

    Examples
    --------
    >>> model, tokenizer = load_finetuned("ttdecomp-finetune", "tt-lora")  # doctest: +SKIP
    >>> batch = tokenizer(["what a ride!"], return_tensors="pt")  # doctest: +SKIP
    >>> model(**batch).logits.argmax(-1)  # doctest: +SKIP
    """
    from ..assets import registry as assets
    from .methods import load_adapted
    from .report import RESULTS_FILE, load_results

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
    labels = results["data"]["labels"]
    net = load_classifier(model, labels, seed)
    net = load_adapted(net, adapter)
    return net, load_tokenizer(model)
