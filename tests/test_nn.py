"""ttdecomp.nn: module kinds and select_modules, shared by the adapters and the compression."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ttdecomp.adapters import TTLoRAConfig, get_tt_model  # noqa: E402
from ttdecomp.compress import select_layers  # noqa: E402
from ttdecomp.nn import (  # noqa: E402
    TargetModulesError,
    dense_weight,
    in_out_features,
    is_conv1d,
    is_linear,
    output_head,
    select_modules,
)


def _gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=40, n_positions=8)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=24, max_position_embeddings=8, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def test_kinds_of_linear_and_conv1d_layers():
    gpt2, linear = _gpt2(), torch.nn.Linear(16, 48)
    conv = gpt2.transformer.h[0].attn.c_attn  # Conv1D, weight stored (in, out)
    assert is_conv1d(conv) and is_linear(conv) and not is_conv1d(linear)
    assert in_out_features(conv) == in_out_features(linear) == (16, 48)
    assert dense_weight(conv).shape == dense_weight(linear).shape == (48, 16)
    assert not is_linear(gpt2.transformer.ln_f)
    with pytest.raises(Exception, match="LayerNorm"):
        in_out_features(gpt2.transformer.ln_f)


def test_output_head_is_found_and_unwrapped():
    gpt2 = _gpt2()
    assert output_head(gpt2) is gpt2.lm_head
    model = get_tt_model(_gpt2(), TTLoRAConfig(tt_rank=2, target_modules=["c_attn"]))
    assert output_head(model.base_model) is model.base_model.lm_head
    assert output_head(torch.nn.Linear(2, 2)) is None


def test_select_modules_names_suffixes_regexes_and_all_linear():
    bert = _bert()
    linear = [n for n, m in bert.named_modules() if is_linear(m)]
    assert list(select_modules(bert)) == linear  # BERT's classifier is not an output embedding
    assert "classifier" not in select_layers(bert)  # compress skips heads by name too
    assert list(select_modules(bert, ["query"])) == ["bert.encoder.layer.0.attention.self.query"]
    by_regex = select_modules(bert, r".*\.(query|value)")
    assert [n.rsplit(".", 1)[-1] for n in by_regex] == ["query", "value"]
    kept = select_modules(bert, exclude_modules=["classifier", "pooler.dense"])
    assert "classifier" not in kept and "bert.pooler.dense" not in kept
    gpt2 = _gpt2()
    assert "lm_head" not in select_modules(gpt2)  # the output embedding never is


@pytest.mark.parametrize(
    ("targets", "exclude", "match"),
    [
        (["query", "nothing"], None, "'nothing' matches no module"),
        (r"bert\.nothing.*", None, "matches no module"),
        (["query"], ["nothing"], "exclude_modules entry 'nothing'"),
        (["attention.self"], None, "of type \\['BertSelfAttention'\\]"),
        (["query"], ["query"], "no module is left"),
        (["(a+)+"], None, "backtrack"),
        ([""], None, "non-empty"),
        ([], None, "non-empty"),
    ],
)
def test_select_modules_refuses_what_selects_nothing_or_the_wrong_kind(targets, exclude, match):
    with pytest.raises(TargetModulesError, match=match):
        select_modules(_bert(), targets, exclude_modules=exclude)


def test_adapters_and_compress_select_the_same_layers():
    bert = _bert()
    model = get_tt_model(_bert(), TTLoRAConfig(tt_rank=2, target_modules=["query", "value"]))
    adapted = sorted(n.removeprefix("base_model.") for n in model.targeted_module_names)
    assert adapted == sorted(select_layers(bert, ["query", "value"]))
