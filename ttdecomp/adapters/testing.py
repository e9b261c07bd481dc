"""Tiny random Hugging Face models built from configs, for tests, examples and benchmarks.

Nothing is downloaded: every model is built from a config with random weights, seeded.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TINY_KINDS", "tiny_model"]

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
