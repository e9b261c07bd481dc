"""ttdecomp.adapters: merging, unloading, several adapters, disabling."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    ModulesToSaveWrapper,
    TTAdapterLayer,
    TTLoRAConfig,
    get_tt_model,
)
from ttdecomp.adapters.testing import tiny_model  # noqa: E402
from ttdecomp.errors import InvalidInputError  # noqa: E402


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(2, 128, (2, 8), generator=torch.Generator().manual_seed(seed))


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _randomize(model) -> None:
    """Give every adapter non-trivial values (as after training)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "tt_adapters" in n:
                p.add_(torch.randn_like(p) * 0.3)


CONFIGS = {
    "tt-lora": TTLoRAConfig(tt_rank=3, alpha=2.0),
    "loretta-rep": LoRETTAConfig(variant="rep", tensor_rank=3, r=4),
}


@pytest.mark.parametrize("kind", ["llama", "gpt2", "roberta"])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_merge_matches_unmerged_and_round_trip_is_bit_exact(kind, method):
    torch.manual_seed(0)
    base = tiny_model(kind)
    base_weights = _weights(base)
    model = get_tt_model(base, CONFIGS[method])
    _randomize(model)
    ids = _ids()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        model.merge_adapter()
        merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    layer = model.base_model.get_submodule(model.targeted_module_names[0])
    assert layer.merged
    model.unmerge_adapter()
    assert not layer.merged
    for name in model.targeted_module_names:
        w = model.base_model.get_submodule(name).base_layer.weight
        assert torch.equal(w, base_weights[name + ".weight"]), name
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=0, atol=0)


def test_merge_without_keeping_original_is_close():
    torch.manual_seed(0)
    base = tiny_model("llama")
    base_weights = _weights(base)
    model = get_tt_model(base, TTLoRAConfig(tt_rank=3))
    _randomize(model)
    model.merge_adapter(keep_original=False)
    model.unmerge_adapter()
    for name in model.targeted_module_names:
        w = model.base_model.get_submodule(name).base_layer.weight
        torch.testing.assert_close(w, base_weights[name + ".weight"], rtol=0, atol=1e-5)


def test_merge_in_bfloat16_agrees_within_bf16_tolerance():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama", dtype=torch.bfloat16), TTLoRAConfig(tt_rank=3))
    layer = model.base_model.get_submodule(model.targeted_module_names[0])
    assert layer.tt_adapters["default"].cores[0].dtype == torch.float32
    _randomize(model)
    ids = _ids()
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits.float()
        model.merge_adapter()
        merged = model(input_ids=ids).logits.float()
    assert merged.dtype == torch.float32
    scale = unmerged.abs().max()
    assert (merged - unmerged).abs().max() <= 5e-2 * scale


def test_merge_and_unload_returns_plain_model_with_same_outputs():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("roberta"), LoRETTAConfig(variant="rep", tensor_rank=3, r=4))
    _randomize(model)
    with torch.no_grad():
        for p in model.base_model.classifier.modules_to_save["default"].parameters():
            p.add_(0.5)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    plain = model.merge_and_unload()
    assert not any(isinstance(m, (TTAdapterLayer, ModulesToSaveWrapper)) for m in plain.modules())
    assert not any(p.requires_grad for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)


def test_unload_restores_base_model():
    base = tiny_model("gpt2")
    ids = _ids()
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = get_tt_model(base, TTLoRAConfig(tt_rank=2))
    _randomize(model)
    plain = model.unload()
    assert not any(isinstance(m, TTAdapterLayer) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_adp_refuses_to_merge_with_explanation():
    model = get_tt_model(tiny_model("bert"), LoRETTAConfig(variant="adp", bottleneck_size=8))
    before = _weights(model)
    for call in (model.merge_adapter, model.merge_and_unload):
        with pytest.raises(InvalidInputError, match="non-linear bottleneck"):
            call()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    layer = model.base_model.get_submodule(model.targeted_module_names[0])
    with pytest.raises(InvalidInputError, match="cannot be merged"):
        layer.get_delta_weight("default")


def test_disable_adapter_gives_base_outputs_even_when_merged():
    base = tiny_model("llama")
    ids = _ids()
    with torch.no_grad():
        expected = base(input_ids=ids).logits
    model = get_tt_model(base, TTLoRAConfig(tt_rank=2))
    _randomize(model)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=0, atol=0)
        model.merge_adapter()
        with model.disable_adapter():
            torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=0, atol=0)


def test_multiple_adapters_switch_and_delete():
    torch.manual_seed(0)
    ids = _ids()
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    model.add_adapter("other", TTLoRAConfig(tt_rank=3, target_modules=["q_proj", "k_proj"]))
    _randomize(model)
    assert model.active_adapters == ["default"]
    assert len(model.targeted_module_names) == 6
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    with torch.no_grad():
        out_default = model(input_ids=ids).logits
        model.set_adapter("other")
        out_other = model(input_ids=ids).logits
        model.set_adapter(["default", "other"])
        out_both = model(input_ids=ids).logits
    assert all(
        ".other." in n or ".default." in n for n, p in model.named_parameters() if p.requires_grad
    )
    assert not torch.allclose(out_default, out_other)
    assert not torch.allclose(out_both, out_default)
    # With both active, each layer adds both deltas.
    layer = model.base_model.model.layers[0].self_attn.q_proj
    x = torch.randn(2, 64)
    with torch.no_grad():
        both = layer(x)
        expected = layer.base_layer(x) + layer.tt_adapters["default"](x)
        expected = expected + layer.tt_adapters["other"](x)
    torch.testing.assert_close(both, expected)
    with pytest.raises(InvalidInputError, match="unknown adapter"):
        model.set_adapter("missing")
    with pytest.raises(InvalidInputError, match="already has an adapter"):
        model.add_adapter("other", TTLoRAConfig())
    for bad in ("a.b", "../x", "", 3):
        with pytest.raises(InvalidInputError, match="adapter_name"):
            model.add_adapter(bad, TTLoRAConfig())
    with pytest.raises(InvalidInputError, match="add_adapter"):
        get_tt_model(model, TTLoRAConfig())
    model.delete_adapter("other")
    assert len(model.targeted_module_names) == 4
    assert not any(
        isinstance(m, TTAdapterLayer)
        for n, m in model.base_model.named_modules()
        if n.endswith("k_proj")
    )
    model.set_adapter("default")
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, out_default)
    with pytest.raises(InvalidInputError, match="only adapter"):
        model.delete_adapter("default")


def test_print_trainable_parameters(capsys):
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    trainable, total = model.get_nb_trainable_parameters()
    model.print_trainable_parameters()
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"trainable params: {trainable:,d} || all params: {total:,d}")


def test_backward_while_merged_says_unmerge_before_training():
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    model.merge_adapter()
    loss = model(input_ids=_ids()).logits.sum()
    with pytest.raises(InvalidInputError, match="unmerge_adapter"):
        loss.backward()
    model.unmerge_adapter()
    model(input_ids=_ids()).logits.sum().backward()  # trains again once unmerged
    with torch.no_grad():  # merged inference is untouched
        model.merge_adapter()
        model(input_ids=_ids())
