"""``compress_model``: plan every targeted linear layer under one budget, decompose, replace.

1. **Select** the layers (``target_modules``: ``"all-linear"``, a regex, or names/suffixes);
   any entry that matches nothing, or matches a module that is not ``nn.Linear`` /
   ``Conv1D``, is an error.
2. **Calibrate** (optional): run the calibration batches once and accumulate each layer's
   input Gram ``XᵀX`` (forward pre-hooks).
3. **Plan** all layers together with :func:`~ttdecomp.plan_model` under the one global
   budget: on the weights (weight-only), or on the whitened weights ``W L`` (output-aware,
   :mod:`ttdecomp.compress.calibration`), so the parameters go to the layers and bonds where
   the (output) error falls fastest.
4. **Decompose** each layer with its plan (TT-SVD, or whitened TT-SVD + exact un-whitening /
   rounding + refinement), build a :class:`~ttdecomp.compress.TTLinear`, swap it in.
5. **Report** per layer: shapes, ranks, parameters, weight error, and the output error on
   the calibration inputs when given.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError, TTWarning
from ..nn.kinds import dense_weight, in_out_features
from ..nn.linear import TTLinear
from ..nn.selection import TargetModulesError, select_modules
from ..planner import parse_budget, plan_model
from .calibration import collect_grams, decompose_whitened, output_error, whitened_weight

__all__ = [
    "DEFAULT_SKIP",
    "CompressionReport",
    "LayerReport",
    "compress_model",
    "select_layers",
]

#: Module names that ``"all-linear"`` leaves dense: output heads and poolers (the output
#: embedding, ``get_output_embeddings()``, is always left dense too).
DEFAULT_SKIP = ("lm_head", "classifier", "score", "pooler", "qa_outputs")


#: The error of ``target_modules`` that match nothing or match modules that are not linear
#: layers (the one of :func:`ttdecomp.nn.select_modules`, under its former name here).
CompressionTargetError = TargetModulesError


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def select_layers(
    model: nn.Module, target_modules: str | Sequence[str] | None = "all-linear"
) -> dict[str, nn.Module]:
    """The linear layers ``compress_model`` would replace, by name, in model order.

    :func:`ttdecomp.nn.select_modules` with the heads of :data:`DEFAULT_SKIP` left out of
    ``"all-linear"``.

    Parameters
    ----------
    model : nn.Module
    target_modules : "all-linear", str or sequence of str
        ``"all-linear"`` (or ``None``): every ``nn.Linear`` / ``Conv1D`` except the output
        embedding and modules named in :data:`DEFAULT_SKIP`. A string: a regex matched
        against full names (``re.fullmatch``). A sequence: names, name suffixes
        (``"query"`` matches ``encoder.layer.0.attention.self.query``) or regexes.

    Raises
    ------
    InvalidInputError
        An entry that matches no module, or a match that is not ``nn.Linear``/``Conv1D``
        (:class:`~ttdecomp.adapters.TargetModulesError`).

    Examples
    --------
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> list(select_layers(m)), list(select_layers(m, ["2"]))
    (['0', '2'], ['2'])
    """
    return select_modules(
        model,
        target_modules,
        skip=DEFAULT_SKIP,
        kind_name="nn.Linear or transformers Conv1D (what TTLinear replaces)",
    )


@dataclass
class LayerReport:
    """One compressed layer.

    Attributes
    ----------
    name, module_type : str
        The layer's name and ``"Linear"`` or ``"Conv1D"``.
    out_features, in_features : int
    layout : str
        ``"split"`` or ``"interleaved"`` (the planner's choice).
    row_shape, col_shape, ranks : list of int
    n_params, dense_n_params : int
        TT parameters (cores) and the dense weight's (biases are kept as they are).
    weight_error : float
        ``‖W − Ŵ‖ / ‖W‖``.
    output_error : float or None
        ``‖X (W − Ŵ)ᵀ‖ / ‖X Wᵀ‖`` on the calibration inputs (``None`` without them).
    method : str
        ``"weight"`` (TT-SVD of ``W``) or ``"output"`` (whitened, calibration-aware).
    """

    name: str
    module_type: str
    out_features: int
    in_features: int
    layout: str
    row_shape: list[int]
    col_shape: list[int]
    ranks: list[int]
    n_params: int
    dense_n_params: int
    weight_error: float
    output_error: float | None
    method: str


@dataclass
class CompressionReport:
    """What :func:`compress_model` did: per-layer records and totals.

    Attributes
    ----------
    layers : list of LayerReport
    budget : int or None
        The global TT parameter budget.
    method : str
        ``"weight"`` or ``"output"``.
    calibration_batches : int
        Batches the Grams were accumulated over (0 without calibration).
    dtype_note : str or None
        Set when the weights were in half precision (decomposed in float32).
    seconds : float
        Wall time of the whole compression.
    """

    layers: list[LayerReport] = field(default_factory=list)
    budget: int | None = None
    method: str = "weight"
    calibration_batches: int = 0
    dtype_note: str | None = None
    seconds: float = 0.0

    @property
    def n_params(self) -> int:
        """TT parameters over the compressed layers."""
        return sum(r.n_params for r in self.layers)

    @property
    def dense_n_params(self) -> int:
        """Dense weight parameters of the compressed layers."""
        return sum(r.dense_n_params for r in self.layers)

    @property
    def ratio(self) -> float:
        """``n_params / dense_n_params`` (0.5 at a 50% budget)."""
        return self.n_params / self.dense_n_params if self.dense_n_params else 0.0

    def records(self) -> list[dict[str, Any]]:
        """One plain ``dict`` per layer."""
        return [asdict(r) for r in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready values."""
        return {
            "budget": self.budget,
            "method": self.method,
            "calibration_batches": self.calibration_batches,
            "dtype_note": self.dtype_note,
            "seconds": self.seconds,
            "n_params": self.n_params,
            "dense_n_params": self.dense_n_params,
            "layers": self.records(),
        }

    def __str__(self) -> str:
        head = ("layer", "shape", "layout", "ranks", "params", "of dense", "w.err", "out.err")
        rows = []
        for r in self.layers:
            inner = r.ranks[1:-1]
            rank = str(inner[0]) if min(inner) == max(inner) else f"{min(inner)}-{max(inner)}"
            rows.append(
                (
                    r.name,
                    f"{r.out_features}x{r.in_features}",
                    f"{r.layout}/{len(r.row_shape)}",
                    rank,
                    f"{r.n_params:,}",
                    f"{r.n_params / r.dense_n_params:.1%}",
                    f"{r.weight_error:.3f}",
                    "-" if r.output_error is None else f"{r.output_error:.3f}",
                )
            )
        widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )

        out = [line(head), *(line(r) for r in rows)]
        out.append(
            f"{len(self.layers)} layers ({self.method}-aware): {self.n_params:,} TT parameters "
            f"for {self.dense_n_params:,} dense ({self.ratio:.1%})"
            + ("" if self.budget is None else f", budget {self.budget:,}")
            + f"; {self.seconds:.1f} s"
        )
        outs = [r.output_error for r in self.layers if r.output_error is not None]
        werrs = [r.weight_error for r in self.layers]
        summary = f"weight error mean {sum(werrs) / len(werrs):.3f}"
        if outs:
            summary += f", output error mean {sum(outs) / len(outs):.3f} (calibration inputs)"
        out.append(summary)
        if self.dtype_note:
            out.append(self.dtype_note)
        return "\n".join(out)


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="layer")


class RefusedSavePretrained:
    """Stands in for ``save_pretrained`` on a model holding :class:`TTLinear` layers.

    transformers' ``from_pretrained`` rebuilds the base architecture with dense layers and
    would fill every TT layer's weight with random numbers (only a warning), so the
    ``save_pretrained`` / ``from_pretrained`` round trip cannot work; the compressed model is
    saved with :func:`~ttdecomp.compress.save_compressed` and reloaded with
    :func:`~ttdecomp.compress.load_compressed`. Set on the model's instance by
    :func:`compress_model` and :func:`~ttdecomp.compress.load_compressed` (nothing global).
    """

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise InvalidInputError(
            "this model holds TTLinear layers: transformers' save_pretrained/from_pretrained "
            "would reload them as dense layers with random weights. Save it with "
            "ttdecomp.compress.save_compressed(model, folder) (and model.config.save_pretrained"
            "(folder) for the architecture), and reload with load_compressed(fresh_model, "
            "folder), fresh_model being the base architecture (AutoModel.from_pretrained(base))."
        )


def refuse_save_pretrained(model: nn.Module) -> None:
    """Make ``model.save_pretrained`` (if it has one) raise, naming the right calls."""
    if callable(getattr(model, "save_pretrained", None)):
        object.__setattr__(model, "save_pretrained", RefusedSavePretrained())


def _warn_few_rows(layers: dict[str, nn.Module], rows: dict[str, int]) -> None:
    """Warn when a layer saw fewer calibration rows than its input width: its Gram is then
    rank-deficient and only the damping keeps the whitening invertible."""
    short = {
        n: (rows.get(n, 0), in_out_features(m)[0])
        for n, m in layers.items()
        if rows.get(n, 0) < in_out_features(m)[0]
    }
    if short:
        name, (seen, width) = max(short.items(), key=lambda kv: kv[1][1] - kv[1][0])
        warnings.warn(
            f"the calibration gives {len(short)} layer(s) fewer input rows (tokens) than their "
            f"input width, e.g. {name!r}: {seen} rows for {width} inputs. Their whitening is "
            "rank-deficient (the input directions never seen are kept by the damping alone), "
            f"so the output-aware decomposition is weaker there; give at least {width} token "
            "rows (more calibration texts), or method='weight'.",
            TTWarning,
            stacklevel=3,
        )


def compress_model(
    model: nn.Module,
    budget: int | float | str | None = None,
    *,
    eps: float | None = None,
    target_modules: str | Sequence[str] | None = "all-linear",
    calibration: Any = None,
    method: str | None = None,
    layout: str | None = "auto",
    damping: float = 0.01,
    allocation: str = "proportional",
    refine_steps: int | None = None,
    inplace: bool = False,
    progress: bool = False,
) -> tuple[nn.Module, CompressionReport]:
    """Replace a model's linear layers by :class:`TTLinear` under one global budget.

    Parameters
    ----------
    model : nn.Module
        Any torch model (a Hugging Face model, a ``Sequential``...). Not modified unless
        ``inplace``.
    budget : int, float or str, optional
        Global TT parameter budget over the targeted layers' weights: a count, or a fraction
        of their dense size in ``(0, 1)`` (``0.5`` or ``"50%"``); a string is read as
        ``ttdecomp compress --budget`` reads it (``"2k"``, ``"1.5M"``, ``"50%"``:
        :func:`~ttdecomp.parse_budget`). Biases stay dense, outside it.
    eps : float, optional
        Per-layer relative error target instead of (or within) the budget: weight error
        (weight-only) or damped output error (with calibration).
    target_modules : "all-linear", str or sequence of str
        See :func:`select_layers`.
    calibration : optional
        Inputs to run the model on: a tensor (``model(x)``), a mapping of tensors
        (``model(**batch)``, e.g. a tokenizer's output), or a list of those. With it the
        report gives each layer's output error and, by default, the decomposition is
        output-aware.
    method : {"output", "weight"}, optional
        ``"output"`` (needs calibration; default when it is given): plan and decompose the
        whitened weights (:mod:`ttdecomp.compress.calibration`). ``"weight"`` (default
        without calibration): plain TT-SVD of the weights.
    layout : {"auto", "split", "interleaved"}
        The planner's layout search (:func:`~ttdecomp.plan_model`).
    damping : float
        Relative ridge of the whitening.
    allocation : {"proportional", "global"}
        How the one budget is shared between the layers (:func:`~ttdecomp.plan_model`):
        ``"proportional"`` (default) gives every layer the same fraction of its dense size
        and plans its factorisation and ranks within it; ``"global"`` moves parameters to
        the layers whose (whitened) error bound falls fastest. Measured on all-MiniLM-L6-v2
        at 50% (calibration-aware): mean-pooled cosine 0.85 proportional, 0.77 global (the
        global greedy starves the FFN output layers, whose spectra are flat).
    refine_steps : int, optional
        L-BFGS iterations of the calibration-aware refinement of layers whose input index
        spans several cores (:func:`~ttdecomp.compress.decompose_whitened`; default 40, 0
        skips it). It is the slow part of compressing a large model: one ``(M, N) @ (N, N)``
        product per evaluation (~20 s per 576 x 1536 SmolLM2 FFN layer at 40 steps).
    inplace : bool
        Modify ``model`` itself instead of a deep copy.
    progress : bool
        A tqdm progress bar per layer on stderr.

    Returns
    -------
    model : nn.Module
        The compressed model (a copy unless ``inplace``), in eval mode if it was.
    report : CompressionReport

    Raises
    ------
    InvalidInputError
        Neither budget nor eps; a budget below one rank-1 train per layer (the message names
        the layers and the minimum); ``target_modules`` matching nothing or non-linear
        modules; calibration of the wrong width, with NaN/Inf, or that the model cannot run;
        ``method="output"`` without calibration.

    Examples
    --------
    >>> torch.manual_seed(0) is not None
    True
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    >>> x = torch.randn(256, 64)
    >>> small, report = compress_model(net, budget=0.5, calibration=x)
    >>> report.n_params <= 0.5 * (64 * 64 + 64 * 16), type(small[0]).__name__
    (True, 'TTLinear')
    >>> [r.name for r in report.layers], report.method
    (['0', '2'], 'output')
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch nn.Module, got {type(model).__name__}.")
    if budget is not None:
        budget = parse_budget(budget)  # "50%", "2k": as --budget reads them
    if budget is None and eps is None:
        raise InvalidInputError(
            "give a budget (a parameter count, or a fraction such as budget=0.5 for 50% of the "
            "targeted layers' dense parameters) or eps=... (a per-layer error target)."
        )
    if method is None:
        method = "output" if calibration is not None else "weight"
    if method not in ("output", "weight"):
        raise InvalidInputError(f"method must be 'output' or 'weight', got {method!r}.")
    if refine_steps is not None and (
        isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0
    ):
        raise InvalidInputError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")
    if method == "output" and calibration is None:
        raise InvalidInputError(
            "method='output' minimises the output error on calibration inputs; pass "
            "calibration=... (model inputs), or method='weight'."
        )
    layers = select_layers(model, target_modules)
    dense_size = sum(math.prod(in_out_features(m)) for m in layers.values())
    if isinstance(budget, int) and budget >= dense_size:
        raise InvalidInputError(
            f"budget {budget:,} is not below the dense size of the targeted layers' weights "
            f"({dense_size:,} parameters in {len(layers)} layers): there is nothing to "
            "compress. Give a smaller count, or a fraction such as budget=0.5."
        )
    if not inplace:
        memo_model = copy.deepcopy(model)
        layers = {n: memo_model.get_submodule(n) for n in layers}
        model = memo_model
    grams: dict[str, torch.Tensor] = {}
    n_batches = 0
    if calibration is not None:
        rows: dict[str, int] = {}
        grams, n_batches = collect_grams(model, layers, calibration, rows=rows)
        _warn_few_rows(layers, rows)
    notes = set()
    weights: dict[str, torch.Tensor] = {}
    for name, module in layers.items():
        w = dense_weight(module)
        if not w.is_floating_point():
            raise InvalidInputError(
                f"layer {name!r} has a {w.dtype} weight (quantised?); compress a floating model."
            )
        if w.dtype in (torch.float16, torch.bfloat16):
            notes.add(str(w.dtype).removeprefix("torch."))
        weights[name] = w.detach().float().double().cpu()  # decomposed in float64
    dtype_note = None
    if notes:
        dtype_note = (
            f"the model is in {', '.join(sorted(notes))}: its weights are decomposed in float32 "
            "(here float64; TT-SVD in half precision loses too much) and the TT cores are "
            "stored in the layers' own dtype."
        )
        warnings.warn(dtype_note, TTWarning, stacklevel=2)
    targets = (
        {n: whitened_weight(weights[n], grams[n], damping).numpy() for n in layers}
        if method == "output"
        else {n: w.numpy() for n, w in weights.items()}
    )
    mp = plan_model(
        targets,
        budget,
        eps=eps,
        layout=layout,
        verify=False,
        progress=progress,
        allocation=allocation,
    )
    del targets
    report = CompressionReport(
        budget=mp.budget, method=method, calibration_batches=n_batches, dtype_note=dtype_note
    )
    for name in _progress(list(layers), progress, "compressing"):
        module, p, w = layers[name], mp.plans[name], weights[name]
        if method == "output":
            ttm = decompose_whitened(
                w,
                grams[name],
                p.row_shape,
                p.col_shape,
                p.ranks,
                damping=damping,
                refine_steps=refine_steps,
            ).ttm
        else:
            ttm = p.decompose(w)
        approx = ttm.full()
        w_err = float(torch.linalg.norm(w - approx) / torch.linalg.norm(w)) if w.any() else 0.0
        o_err = output_error(w, approx, grams[name]) if name in grams else None
        ref = module.weight
        from ..tt_matrix import TTMatrix

        cast = TTMatrix([c.to(dtype=ref.dtype, device=ref.device) for c in ttm.cores])
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        layer = TTLinear.from_ttmatrix(cast, bias)
        layer.train(module.training)
        _replace(model, name, layer)
        report.layers.append(
            LayerReport(
                name=name,
                module_type="Linear" if isinstance(module, nn.Linear) else "Conv1D",
                out_features=int(w.shape[0]),
                in_features=int(w.shape[1]),
                layout=p.layout,
                row_shape=list(p.row_shape),
                col_shape=list(p.col_shape),
                ranks=[int(r) for r in ttm.ranks],
                n_params=int(ttm.n_params),
                dense_n_params=int(math.prod(w.shape)),
                weight_error=w_err,
                output_error=o_err,
                method=method,
            )
        )
    report.seconds = time.perf_counter() - start
    refuse_save_pretrained(model)
    return model, report
