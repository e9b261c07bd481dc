"""ttdecomp.adapters: save_pretrained / from_pretrained / load_adapter, and export_peft_lora."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from ttdecomp.adapters import (  # noqa: E402
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    LoRETTAConfig,
    TTAdapterLayer,
    TTAdapterModel,
    TTLoRAConfig,
    get_adapter_state_dict,
    get_tt_model,
    set_adapter_state_dict,
)
from ttdecomp.adapters.testing import tiny_model  # noqa: E402
from ttdecomp.errors import InvalidInputError, RankError, ShapeError  # noqa: E402


def _ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(2, 128, (2, 8), generator=torch.Generator().manual_seed(seed))


def _randomize(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)


def _snapshot(model) -> tuple[list, dict]:
    return [type(m) for m in model.modules()], {
        k: v.detach().clone() for k, v in model.state_dict().items()
    }


def _unchanged(model, snap) -> bool:
    types, state = snap
    now = model.state_dict()
    return [type(m) for m in model.modules()] == types and all(
        torch.equal(state[k], now[k]) for k in state
    )


@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("llama", TTLoRAConfig(tt_rank=3, init="ttsvd")),
        ("gpt2", TTLoRAConfig(tt_rank=2)),
        ("roberta", LoRETTAConfig(variant="rep", tensor_rank=3, r=4)),
        ("bert", LoRETTAConfig(variant="adp", tensor_rank=3, bottleneck_size=8)),
        ("bert", TTLoRAConfig(tt_rank=2, modules_to_save=["classifier"])),
        ("gpt2", LoRETTAConfig(variant="adp", tensor_rank=2, bottleneck_size=8)),
    ],
)
def test_save_load_gives_identical_outputs(tmp_path, kind, config):
    torch.manual_seed(0)
    model = get_tt_model(tiny_model(kind), config)
    _randomize(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_NAME, CONFIG_NAME]
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["method"] == config.method and record["dtype"] == "float32"
    assert record["ttdecomp_version"] and set(record["modules"]) == set(model.targeted_module_names)

    trainable = TTAdapterModel.from_pretrained(tiny_model(kind), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        torch.testing.assert_close(trainable(input_ids=ids).logits, expected, rtol=0, atol=0)
    loaded = TTAdapterModel.from_pretrained(tiny_model(kind), tmp_path)
    assert not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        # Frozen cores may take another summation order in ttdecomp.contract: rounding only.
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)


def test_named_adapters_go_to_subfolders_and_load_adapter(tmp_path):
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    model.add_adapter("extra", TTLoRAConfig(tt_rank=3, target_modules=["k_proj"]))
    _randomize(model)
    model.set_adapter("extra")
    _randomize(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / CONFIG_NAME).is_file() and (tmp_path / "extra" / CONFIG_NAME).is_file()
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    fresh = TTAdapterModel.from_pretrained(tiny_model("llama"), tmp_path)
    fresh.load_adapter(tmp_path / "extra", "extra")
    assert fresh.active_adapters == ["default"]
    fresh.set_adapter("extra")
    with torch.no_grad():  # frozen cores: rounding-level differences allowed (see above)
        torch.testing.assert_close(fresh(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)


def test_state_dict_helpers_validate_before_copying():
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    sd = get_adapter_state_dict(model.base_model)
    assert all(".tt_adapters." not in k for k in sd)
    snap = _snapshot(model)
    bad = dict(sd)
    key = next(iter(bad))
    bad[key] = torch.zeros(1)
    with pytest.raises(ShapeError, match="shape"):
        set_adapter_state_dict(model.base_model, {k: v + 1 for k, v in bad.items()})
    bad = {k: v.double() for k, v in sd.items()}
    with pytest.raises(InvalidInputError, match="dtype"):
        set_adapter_state_dict(model.base_model, bad)
    with pytest.raises(InvalidInputError, match="missing keys"):
        set_adapter_state_dict(model.base_model, {})
    assert _unchanged(model, snap)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    _randomize(model)
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        ("truncate_weights", AdapterFileError, "corrupted or truncated"),
        ("garbage_weights", AdapterFileError, "corrupted or truncated"),
        ("truncate_config", AdapterFileError, "not valid JSON"),
        ("drop_weights", AdapterFileError, "does not exist"),
        ("wrong_dtype", AdapterFileError, "dtype"),
        ("wrong_shape", ShapeError, "shape"),
        ("extra_tensor", AdapterFileError, "unexpected tensors"),
        ("wrong_method", InvalidInputError, "method"),
    ],
)
def test_bad_files_fail_clearly_and_leave_model_untouched(saved, damage, error, match):
    from safetensors.torch import load_file, save_file

    w, c = saved / WEIGHTS_NAME, saved / CONFIG_NAME
    if damage == "truncate_weights":
        w.write_bytes(w.read_bytes()[:-40])
    elif damage == "garbage_weights":
        w.write_bytes(b"\x00" * 64)
    elif damage == "truncate_config":
        c.write_text(c.read_text()[:50])
    elif damage == "drop_weights":
        w.unlink()
    elif damage in ("wrong_dtype", "wrong_shape", "extra_tensor"):
        tensors = load_file(str(w))
        key = sorted(tensors)[0]
        if damage == "wrong_dtype":
            tensors[key] = tensors[key].double()
        elif damage == "wrong_shape":
            tensors[key] = torch.zeros(3, 3, 3, 3)
        else:
            tensors["model.layers.0.self_attn.q_proj.cores.9"] = torch.zeros(1)
        save_file(tensors, str(w))
    elif damage == "wrong_method":
        record = json.loads(c.read_text())
        record["config"]["method"] = "lora"
        c.write_text(json.dumps(record))
    base = tiny_model("llama")
    snap = _snapshot(base)
    with pytest.raises(error, match=match):
        TTAdapterModel.from_pretrained(base, saved)
    assert _unchanged(base, snap)


def test_loading_into_a_different_architecture_fails_clearly(saved):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128,
        )
    )
    snap = _snapshot(other)
    with pytest.raises(ShapeError, match="48"):
        TTAdapterModel.from_pretrained(other, saved)
    assert _unchanged(other, snap)


# ----------------------------------------------------------------------------- PEFT export
@pytest.mark.parametrize(
    ("kind", "config"),
    [
        ("llama", TTLoRAConfig(tt_rank=3)),
        ("gpt2", TTLoRAConfig(tt_rank=2)),
        ("roberta", LoRETTAConfig(variant="rep", tensor_rank=3, r=4)),
    ],
)
def test_export_peft_lora_loads_in_peft_with_matching_outputs(tmp_path, kind, config):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = get_tt_model(tiny_model(kind), config)
    _randomize(model)
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    full_rank = max(
        min(m.in_features, m.out_features)
        for m in model.base_model.modules()
        if isinstance(m, TTAdapterLayer)
    )
    errors = model.export_peft_lora(tmp_path / "exact", rank=full_rank)
    assert max(errors.values()) < 1e-5
    peft_model = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path / "exact")
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)

    # A truncated export: PEFT applies exactly the best rank-2 approximation of every ΔW.
    errors = model.export_peft_lora(tmp_path / "low", rank=2)
    low = peft.PeftModel.from_pretrained(tiny_model(kind), tmp_path / "low")
    for name in model.targeted_module_names:
        ours = model.base_model.get_submodule(name)
        delta = ours.tt_adapters["default"].delta_weight()
        theirs = low.base_model.model.get_submodule(name)
        peft_delta = theirs.get_delta_weight("default").float()
        if ours.fan_in_fan_out:
            peft_delta = peft_delta.T
        err = torch.linalg.norm(delta - peft_delta) / torch.linalg.norm(delta)
        assert err.item() == pytest.approx(errors[name], rel=1e-3, abs=1e-6)
        s = torch.linalg.svdvals(delta)
        assert err.item() == pytest.approx(
            (s[2:].square().sum() / s.square().sum()).sqrt().item(), rel=1e-3, abs=1e-5
        )


def test_export_rejects_adp_and_bad_rank(tmp_path):
    adp = get_tt_model(tiny_model("bert"), LoRETTAConfig(variant="adp", bottleneck_size=8))
    with pytest.raises(InvalidInputError, match="cannot be expressed"):
        adp.export_peft_lora(tmp_path, rank=4)
    lora = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    for rank in (0, 2.0, True):
        with pytest.raises(RankError):
            lora.export_peft_lora(tmp_path, rank=rank)
    assert not any(tmp_path.iterdir())
