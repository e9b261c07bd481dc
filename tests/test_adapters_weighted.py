"""ttdecomp.adapters: add_weighted_adapter, the exact split-layout PEFT export, config
save_pretrained / from_pretrained and save_pretrained(selected_adapters=...)."""

from __future__ import annotations

import contextlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ttdecomp.adapters import (  # noqa: E402
    CONFIG_NAME,
    AdapterFileError,
    LoRETTAConfig,
    TTAdapterConfig,
    TTAdapterLayer,
    TTAdapterModel,
    TTLoRAConfig,
    get_tt_model,
)
from ttdecomp.adapters.testing import tiny_batch, tiny_model  # noqa: E402
from ttdecomp.errors import InvalidInputError, ShapeError  # noqa: E402


def _randomize(model, scale: float = 0.3, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "tt_adapters" in n or "modules_to_save" in n:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _layers(model):
    return [m for m in model.base_model.modules() if isinstance(m, TTAdapterLayer)]


def _two_adapters(r1: int = 2, r2: int = 3, seed: int = 0) -> TTAdapterModel:
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=r1, init="paper"))
    model.add_adapter("b", TTLoRAConfig(tt_rank=r2, alpha=3.0, init="paper"))
    _randomize(model, seed=seed)
    return model


# ------------------------------------------------------------------ add_weighted_adapter
@settings(max_examples=200)
@given(
    weights=st.lists(st.floats(-4, 4, allow_nan=False), min_size=2, max_size=2),
    r1=st.integers(1, 4),
    r2=st.integers(1, 4),
    combination=st.sampled_from(["exact", "cat"]),
)
def test_exact_combination_is_the_weighted_sum_of_delta_w(weights, r1, r2, combination) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(24, 36))
    model = get_tt_model(net, TTLoRAConfig(tt_rank=r1, init="paper", target_modules=["0"]))
    model.add_adapter("b", TTLoRAConfig(tt_rank=r2, alpha=2.5, init="paper", target_modules=["0"]))
    bounds = model.add_weighted_adapter(["default", "b"], weights, "w", combination)
    layer = model.base_model[0]
    with torch.no_grad():
        expected = weights[0] * layer.get_delta_weight("default")
        expected += weights[1] * layer.get_delta_weight("b")
        got = layer.get_delta_weight("w")
    scale = max(float(expected.abs().max()), 1e-6)
    assert float((got - expected).abs().max()) <= 1e-5 * scale + 1e-6
    ranks = layer.tt_adapters["w"].cores
    cfg = model.tt_config["w"]
    assert cfg.tt_rank == r1 + r2 and cfg.alpha == 1.0
    assert all(int(c.shape[3]) <= r1 + r2 for c in ranks)
    assert set(bounds) == {"0"} and bounds["0"] <= 1e-6


def test_rounded_combination_meets_its_reported_error_bound() -> None:
    model = _two_adapters(3, 4)
    for kw in ({"tt_rank": 2}, {"eps": 0.3}, {"tt_rank": 5, "eps": 0.05}):
        if len(kw) == 2:
            warns = pytest.warns(UserWarning)
        else:
            warns = contextlib.nullcontext()
        name = "w" + "_".join(map(str, kw.values())).replace(".", "")
        with warns:
            bounds = model.add_weighted_adapter(
                ["default", "b"], [1.0, -0.5], name, "rounded", **kw
            )
        for layer in _layers(model):
            full = layer.get_delta_weight("default") - 0.5 * layer.get_delta_weight("b")
            err = float((layer.get_delta_weight(name) - full).norm() / full.norm())
            name_of = next(n for n, m in model.base_model.named_modules() if m is layer)
            assert err <= bounds[name_of] * (1 + 1e-4) + 1e-6
            if "tt_rank" not in kw:  # with a rank cap too, eps may not be met (a warning)
                assert bounds[name_of] <= kw["eps"] + 1e-9
        if "tt_rank" in kw:
            assert model.tt_config[name].tt_rank <= kw["tt_rank"]
    # "svd" is PEFT's name for the rounded combination
    model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "s", "svd", tt_rank=1)
    assert model.tt_config["s"].tt_rank == 1


def test_a_weighted_adapter_serves_saves_and_reloads_like_any_other(tmp_path) -> None:
    model = _two_adapters()
    model.add_weighted_adapter(["default", "b"], [0.7, 0.3], "mix")
    assert model.active_adapters == ["default"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".mix." in n)
    ids = tiny_batch("llama", 2)["input_ids"]
    model.eval()
    model.set_adapter("mix")
    with torch.no_grad():
        out = model(input_ids=ids).logits
    model.save_pretrained(tmp_path, selected_adapters=["mix"])
    fresh = TTAdapterModel.from_pretrained(tiny_model("llama"), tmp_path / "mix", "mix")
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, out)


def test_add_weighted_adapter_bad_inputs() -> None:
    model = _two_adapters()
    model.add_adapter("rep", LoRETTAConfig(variant="rep", tensor_rank=2, r=4))
    model.add_adapter("adp", LoRETTAConfig(variant="adp", tensor_rank=2, bottleneck_size=8))
    model.add_adapter("q_only", TTLoRAConfig(tt_rank=2, target_modules=["q_proj"]))
    shape = TTLoRAConfig(tt_rank=2, tt_shape={"q_proj": [8, 8, 8, 8], "v_proj": [8, 8, 4, 8]})
    model.add_adapter("other_shape", shape)
    before = dict(model.tt_config)
    with pytest.raises(InvalidInputError, match="weights has 3 entries but adapters has 2"):
        model.add_weighted_adapter(["default", "b"], [1.0, 2.0, 3.0], "w")
    with pytest.raises(InvalidInputError, match="LoRETTA-adp"):
        model.add_weighted_adapter(["default", "adp"], [1.0, 1.0], "w")
    with pytest.raises(InvalidInputError, match=r"combines TT-LoRA adapters.*loretta"):
        model.add_weighted_adapter(["default", "rep"], [1.0, 1.0], "w")
    with pytest.raises(ShapeError, match="different TT shapes"):
        model.add_weighted_adapter(["default", "other_shape"], [1.0, 1.0], "w")
    with pytest.raises(ShapeError, match="same target modules"):
        model.add_weighted_adapter(["default", "q_only"], [1.0, 1.0], "w")
    with pytest.raises(InvalidInputError, match=r"unknown adapter\(s\) \['nope'\]"):
        model.add_weighted_adapter(["default", "nope"], [1.0, 1.0], "w")
    with pytest.raises(InvalidInputError, match="already has an adapter named 'b'"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "b")
    with pytest.raises(InvalidInputError, match="combination_type must be one of"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "w", "ties")
    with pytest.raises(InvalidInputError, match="needs tt_rank"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "w", "rounded")
    with pytest.raises(InvalidInputError, match="combination_type='rounded' to round"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "w", tt_rank=2)
    with pytest.raises(InvalidInputError, match="finite"):
        model.add_weighted_adapter(["default", "b"], [1.0, float("nan")], "w")
    with pytest.raises(InvalidInputError, match="list of adapter names"):
        model.add_weighted_adapter("default", [1.0], "w")
    with pytest.raises(InvalidInputError, match="'__base__' is reserved"):
        model.add_weighted_adapter(["default", "b"], [1.0, 1.0], "__base__")
    assert model.tt_config == before and "w" not in {
        n for layer in _layers(model) for n in layer.tt_adapters
    }


@pytest.mark.parametrize(
    ("dtype", "weight"),
    [(torch.float32, 1e300), (torch.float32, 1e38), (torch.float64, 1e300)],
)
@pytest.mark.parametrize("combination", ["exact", "rounded"])
def test_weights_that_overflow_the_cores_after_the_cast_are_refused(dtype, weight, combination):
    """Finite weights whose combination is not finite in the adapters' dtype leave no adapter."""
    model = _two_adapters().to(dtype)
    before = dict(model.tt_config)
    kw = {"tt_rank": 2} if combination == "rounded" else {}
    with pytest.raises(InvalidInputError, match=rf"does not fit the adapters' dtype {dtype}"):
        model.add_weighted_adapter(["default", "b"], [weight, weight], "w", combination, **kw)
    assert model.tt_config == before
    assert all("w" not in layer.tt_adapters for layer in _layers(model))
    # a large weight the dtype does hold is accepted, and its ΔW is finite
    model.add_weighted_adapter(["default", "b"], [1e3, -1e3], "big", combination, **kw)
    for layer in _layers(model):
        assert bool(torch.isfinite(layer.get_delta_weight("big")).all())


def test_weighted_adapter_refuses_two_modules_to_save_copies() -> None:
    cfg = TTLoRAConfig(tt_rank=2, modules_to_save=["classifier"])
    model = get_tt_model(tiny_model("bert"), cfg)
    model.add_adapter("b", cfg)
    with pytest.raises(InvalidInputError, match="own copy of 'classifier'"):
        model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "w")
    model.add_adapter("plain", TTLoRAConfig(tt_rank=2))
    _randomize(model)
    model.add_weighted_adapter(["default", "plain"], [0.5, 0.5], "w")  # one copy: taken over
    wrapper = model.base_model.classifier
    for k, v in wrapper.modules_to_save["default"].state_dict().items():
        assert torch.equal(wrapper.modules_to_save["w"].state_dict()[k], v)


# ------------------------------------------------------------------ export
def test_split_layout_export_is_exact_from_the_halves_and_loads_in_peft(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, init="paper"))
    _randomize(model)
    ids = tiny_batch("llama", 2)["input_ids"]
    model.eval()
    with torch.no_grad():
        want = model(input_ids=ids).logits
    for rank in (3, 5):
        errors = model.export_peft_lora(tmp_path / str(rank), rank=rank)
        assert set(errors.values()) == {0.0}
        lora = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / str(rank)).eval()
        with torch.no_grad():
            torch.testing.assert_close(lora(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
    # below the bond rank the SVD path truncates, and says by how much
    errors = model.export_peft_lora(tmp_path / "1", rank=1)
    assert all(e > 0 for e in errors.values())


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize(
    "config",
    [
        TTLoRAConfig(tt_rank=6, alpha=3.0, target_modules=["q_proj"], tt_shape=[8, 8, 8, 8]),
        LoRETTAConfig(variant="adp", bottleneck_size=16, non_linearity="gelu"),
    ],
)
def test_config_save_and_from_pretrained_round_trip(tmp_path, config) -> None:
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["method"] == config.method
    assert type(config).from_pretrained(tmp_path) == config
    assert TTAdapterConfig.from_pretrained(tmp_path) == config
    other = LoRETTAConfig if isinstance(config, TTLoRAConfig) else TTLoRAConfig
    with pytest.raises(AdapterFileError, match="not a"):
        other.from_pretrained(tmp_path)


def test_config_from_pretrained_reads_an_adapter_folder_and_refuses_others(tmp_path) -> None:
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, alpha=5.0))
    model.save_pretrained(tmp_path / "ad")
    cfg = TTLoRAConfig.from_pretrained(tmp_path / "ad")
    assert cfg == model.tt_config["default"]
    with pytest.raises(AdapterFileError, match="does not exist"):
        TTLoRAConfig.from_pretrained(tmp_path)
    with pytest.raises(AdapterFileError, match="not a folder"):
        TTLoRAConfig.from_pretrained(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterFileError, match="JSON"):
        TTLoRAConfig.from_pretrained(tmp_path / "bad")


def test_save_pretrained_selected_adapters(tmp_path) -> None:
    model = _two_adapters()
    model.save_pretrained(tmp_path / "sel", selected_adapters=["b"])
    assert sorted(p.name for p in (tmp_path / "sel").iterdir()) == ["b"]
    model.save_pretrained(tmp_path / "both", selected_adapters=["b"], adapter_names=["b"])
    with pytest.raises(InvalidInputError, match="same option"):
        model.save_pretrained(tmp_path / "x", selected_adapters=["b"], adapter_names=["default"])
    with pytest.raises(InvalidInputError, match="unknown adapter"):
        model.save_pretrained(tmp_path / "x", selected_adapters=["nope"])
