"""Export a TT adapter as a standard PEFT LoRA checkpoint.

A TT-LoRA adapter in the split layout (input cores first, output cores after, the default) is
already LoRA-shaped: merging the input cores gives ``A`` (N × r) and the output cores ``B``
(r × M), with ``ΔW = alpha · (A B)ᵀ`` and ``r`` the rank of the bond between the halves. When
``rank >= r`` the export writes ``lora_A = Aᵀ`` and ``lora_B = alpha · Bᵀ`` directly (zero-padded to
``rank``): exact, and no SVD of the dense ΔW is formed.

Otherwise (interleaved layouts, LoRETTA-rep, or ``rank < r``), ΔW (out × in, float32) is
factored as ``U S Vᵀ`` and truncated to ``rank``: ``lora_B = U_k √S_k`` and ``lora_A = √S_k
V_kᵀ``. The output of PEFT then differs from the TT adapter's only by the discarded singular
values (Eckart–Young: ``‖ΔW − B A‖_F = √(Σ_{i>k} σ_i²)``, returned per module). Layers whose
ΔW has fewer than ``rank`` singular values are padded with zeros.

In both cases ``lora_alpha = rank``, so PEFT's scaling ``alpha / r`` is 1.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidInputError, RankError
from ..nn.fast import split_bond, split_halves
from .config import ADP_CANNOT_MERGE, LoRETTAConfig, TTAdapterConfig
from .layers import ModulesToSaveWrapper, TTAdapterLayer, TTLoRAAdapter
from .quantized import reference_weight
from .serialization import write_files

__all__ = ["export_peft_lora"]


def export_peft_lora(
    model: nn.Module,
    config: TTAdapterConfig,
    adapter_name: str,
    save_directory: str | Path,
    rank: int,
) -> dict[str, float]:
    """Write adapter ``adapter_name`` of ``model`` as a PEFT LoRA checkpoint in ``save_directory``.

    Parameters
    ----------
    model : nn.Module
        The model holding the adapter (``TTAdapterModel.base_model``).
    config : TTLoRAConfig or LoRETTAConfig
        The adapter's config (LoRETTA-adp is rejected: it has no ΔW).
    adapter_name : str
    save_directory : str or Path
        Receives ``adapter_config.json`` and ``adapter_model.safetensors``.
    rank : int
        LoRA rank ``r``.

    Returns
    -------
    dict of str to float
        Per module, the relative truncation error ``‖ΔW − B A‖_F / ‖ΔW‖_F`` (0 when ΔW = 0,
        and 0 for a split-layout TT-LoRA layer whose bond rank is at most ``rank``: exported
        exactly from its halves).

    Examples
    --------
    >>> import json, os, tempfile
    >>> import torch
    >>> from ttdecomp.adapters import TTLoRAConfig, export_peft_lora, get_tt_model
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> config = TTLoRAConfig(tt_rank=2, target_modules=["0"])
    >>> model = get_tt_model(net, config)
    >>> folder = tempfile.mkdtemp()
    >>> errors = export_peft_lora(model.base_model, config, "default", folder, rank=4)
    >>> sorted(os.listdir(folder)), errors["0"] < 1e-5  # rank 4 holds a rank-2 split TT-LoRA
    (['adapter_config.json', 'adapter_model.safetensors', 'ttdecomp_export.json'], True)
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RankError(f"rank must be a positive int; got {rank!r}. Typical LoRA ranks: 8-64.")
    if isinstance(config, LoRETTAConfig) and config.variant == "adp":
        raise InvalidInputError(
            f"{ADP_CANNOT_MERGE}, and it cannot be expressed as LoRA either. Export works for "
            "TT-LoRA and LoRETTA-rep adapters."
        )
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError(
            "export_peft_lora writes a checkpoint for the `peft` package; install it with "
            "`pip install peft`."
        ) from None
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    targets: list[str] = []
    conv1d: set[bool] = set()
    modules_to_save: list[str] = []
    for name, m in model.named_modules():
        if isinstance(m, TTAdapterLayer) and adapter_name in m.tt_adapters:
            a, b, errors[name] = _lora_pair(m.tt_adapters[adapter_name], rank)
            dtype = reference_weight(m).dtype  # a quantized base: its compute dtype
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(dtype).contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(dtype).contiguous()
            targets.append(name)
            conv1d.add(m.fan_in_fan_out)
        elif isinstance(m, ModulesToSaveWrapper) and adapter_name in m.modules_to_save:
            modules_to_save.append(name)
            for pname, p in m.modules_to_save[adapter_name].state_dict().items():
                tensors[f"base_model.model.{name}.{pname}"] = p.detach().to("cpu").contiguous()
    if len(conv1d) > 1:
        raise InvalidInputError(
            "the adapter spans both nn.Linear and Conv1D layers; PEFT's fan_in_fan_out is one "
            "flag per config. Export the two kinds from separate adapters."
        )
    lora_config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=targets,
        fan_in_fan_out=conv1d == {True},
        modules_to_save=modules_to_save or None,
        base_model_name_or_path=config.base_model_name_or_path,
        init_lora_weights=True,
    )
    out = Path(save_directory)
    with tempfile.TemporaryDirectory() as scratch:  # PEFT's own config file, as PEFT writes it
        lora_config.save_pretrained(scratch)
        peft_files = [(out / f.name, f.read_bytes()) for f in sorted(Path(scratch).iterdir())]
    report = json.dumps({"rank": rank, "relative_truncation_error": errors}, indent=2) + "\n"
    write_files(  # all or nothing, never through a symbolic link (see save_pretrained)
        [
            (out / "adapter_model.safetensors", save(tensors, metadata={"format": "pt"})),
            *peft_files,
            (out / "ttdecomp_export.json", report.encode()),
        ]
    )
    return errors


def _lora_pair(adapter: nn.Module, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(lora_A (rank × in), lora_B (out × rank), relative error)`` of one adapter, float32."""
    with torch.no_grad():
        if isinstance(adapter, TTLoRAAdapter):
            cores = [c.detach().float() for c in adapter.cores]
            s = split_bond(cores)
            if s is not None and int(cores[s - 1].shape[3]) <= rank:
                half_in, half_out = split_halves(cores, s)  # (in, r), (r, out)
                r = int(half_in.shape[1])
                a = torch.zeros(rank, int(half_in.shape[0]))
                b = torch.zeros(int(half_out.shape[1]), rank)
                a[:r] = half_in.T
                b[:, :r] = half_out.T * adapter.alpha
                return a, b, 0.0
        delta = adapter.delta_weight().detach()  # (out, in) float32
        u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, sv.shape[0])
        root = sv[:k].sqrt()
        b = torch.zeros(delta.shape[0], rank)
        a = torch.zeros(rank, delta.shape[1])
        b[:, :k] = u[:, :k] * root
        a[:k] = root[:, None] * vh[:k]
        total = float(sv.square().sum())
        error = math.sqrt(float(sv[k:].square().sum()) / total) if total > 0 else 0.0
        return a, b, error
