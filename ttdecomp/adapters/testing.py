"""Tiny random Hugging Face models built from configs, for tests, examples and benchmarks.

Nothing is downloaded: every model is built from a config with random weights, seeded.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TINY_KINDS", "distributed_train_worker", "tiny_batch", "tiny_model"]

#: The kinds :func:`tiny_model` builds.
TINY_KINDS = ("llama", "gpt2", "roberta", "bert")


def tiny_model(kind: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A 2-layer random model: ``"llama"`` (causal LM, GQA: 4 query / 2 KV heads, hidden 64),
    ``"gpt2"`` (causal LM with ``Conv1D``, hidden 32), ``"roberta"`` / ``"bert"`` (sequence
    classification, 2 labels, hidden 32).

    Examples
    --------
    >>> m = tiny_model("llama")
    >>> m.config.model_type, m.model.layers[0].self_attn.k_proj.weight.shape
    ('llama', torch.Size([32, 64]))
    """
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    if kind not in TINY_KINDS:
        raise ValueError(f"kind must be one of {TINY_KINDS}; got {kind!r}.")
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
            max_position_embeddings=64,
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "gpt2":
        cfg = GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=2,
            vocab_size=128,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
        model = GPT2LMHeadModel(cfg)
    else:
        common = dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=128,
            max_position_embeddings=64,
            num_labels=2,
        )
        if kind == "roberta":
            model = RobertaForSequenceClassification(RobertaConfig(**common, pad_token_id=1))
        else:
            model = BertForSequenceClassification(BertConfig(**common))
    return model.to(dtype).eval()


def tiny_batch(kind: str, batch: int = 4, seq: int = 8, *, seed: int = 1) -> dict:
    """A random batch for :func:`tiny_model` with labels (token ids or class labels).

    Examples
    --------
    >>> sorted(tiny_batch("bert", 2))
    ['input_ids', 'labels']
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 128, (batch, seq), generator=g)
    if kind in ("roberta", "bert"):
        return {"input_ids": ids, "labels": torch.randint(0, 2, (batch,), generator=g)}
    return {"input_ids": ids, "labels": ids.clone()}


def distributed_train_worker(
    rank: int,
    world_size: int,
    init_file: str,
    out_file: str,
    strategy: str = "ddp",
    steps: int = 3,
) -> None:
    """Train a TT-LoRA adapter on a tiny Llama under DDP or FSDP2 (gloo, file rendezvous, CPU).

    Every rank sees ``1/world_size`` of one fixed global batch of 8 sequences; rank 0 saves the
    adapter's state dict (full tensors) to ``out_file``. With ``world_size=1`` and DDP this is
    the single-process reference, so every run must end with the same weights. Used by the test
    suite through ``torch.multiprocessing.spawn`` (it must be importable, hence here).

    ``strategy``: ``"ddp"`` (``DistributedDataParallel``) or ``"fsdp"`` (``fully_shard`` on every
    decoder layer and on the root; frozen and trainable parameters share the sharded groups).
    """
    import torch.distributed as dist

    from .config import TTLoRAConfig
    from .inject import get_adapter_state_dict
    from .model import get_tt_model

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        torch.set_num_threads(1)
        model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, alpha=2.0))
        model.train()
        if strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            runner: nn.Module = DistributedDataParallel(model)
        elif strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for layer in model.base_model.model.layers:
                fully_shard(layer)
            runner = fully_shard(model)
        else:
            raise ValueError(f"strategy must be 'ddp' or 'fsdp'; got {strategy!r}.")
        full = tiny_batch("llama", batch=8, seq=8)
        shard = {k: v[rank::world_size] for k, v in full.items()}
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            runner(**shard).loss.backward()
            opt.step()
        state = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in get_adapter_state_dict(model.base_model).items()
        }
        if rank == 0:
            torch.save(state, out_file)
        # every rank leaves together: a rank tearing gloo down while its peer is still
        # inside a collective aborts the peer ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
