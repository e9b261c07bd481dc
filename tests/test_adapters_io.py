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


@pytest.mark.parametrize("form", ["flat", "pair", "per_module"])
def test_a_downloaded_config_with_50000_factors_fails_fast(saved, form):
    """A hostile tt_shape is refused by the config validator, not after minutes of products."""
    import time

    c = saved / CONFIG_NAME
    record = json.loads(c.read_text())
    huge = [2] * 50_000
    shape = {"flat": huge, "pair": [[1] * 50_000, huge], "per_module": {"q_proj": huge}}[form]
    record["config"]["tt_shape"] = shape
    c.write_text(json.dumps(record))
    start = time.perf_counter()
    with pytest.raises(AdapterFileError, match=r"tt_shape.* has 50000 factors; at most 64"):
        TTAdapterModel.from_pretrained(tiny_model("llama"), saved)
    assert time.perf_counter() - start < 5.0


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


# ----------------------------------------------------------------------------- transactional saves
def _two_adapter_model():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    model.add_adapter("extra", TTLoRAConfig(tt_rank=3, target_modules=["k_proj"]))
    _randomize(model)
    return model


def _tree_bytes(root) -> dict:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_a_failed_save_leaves_the_previous_adapters_byte_identical(tmp_path, monkeypatch):
    from ttdecomp.adapters import serialization

    model = _two_adapter_model()
    model.save_pretrained(tmp_path)
    before = _tree_bytes(tmp_path)
    _randomize(model)
    real = serialization.get_adapter_state_dict

    def fail_on_extra(m, name="default"):
        if name == "extra":
            raise RuntimeError("disk full")
        return real(m, name)

    monkeypatch.setattr(serialization, "get_adapter_state_dict", fail_on_extra)
    with pytest.raises(RuntimeError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert _tree_bytes(tmp_path) == before  # no temporaries left, nothing replaced
    monkeypatch.undo()
    TTAdapterModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_a_failed_write_leaves_no_temporaries_and_says_why(tmp_path, monkeypatch):
    import os

    model = _two_adapter_model()
    model.save_pretrained(tmp_path)
    before = _tree_bytes(tmp_path)
    real = os.replace
    calls = []

    def read_only(src, dst):
        calls.append(dst)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(AdapterFileError, match="Read-only file system") as info:
        model.save_pretrained(tmp_path)
    assert ".tmp" not in str(info.value)  # names the target, not a temporary
    monkeypatch.setattr(os, "replace", real)
    assert _tree_bytes(tmp_path) == before and calls


def test_a_mixed_old_new_pair_is_refused(tmp_path):
    model = _two_adapter_model()
    old, new = tmp_path / "old", tmp_path / "new"
    model.save_pretrained(old)
    _randomize(model)
    model.save_pretrained(new)
    (old / WEIGHTS_NAME).write_bytes((new / WEIGHTS_NAME).read_bytes())  # an interrupted rename
    with pytest.raises(AdapterFileError, match="different saves"):
        TTAdapterModel.from_pretrained(tiny_model("llama"), old)


def test_stale_adapter_subfolders_are_removed_by_a_full_save(tmp_path):
    model = _two_adapter_model()
    model.save_pretrained(tmp_path)
    checkpoint = tmp_path / "checkpoint-5"  # a trainer checkpoint: not an adapter sub-folder
    model.save_pretrained(checkpoint)
    model.delete_adapter("extra")
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "extra" / CONFIG_NAME).exists()
    assert (checkpoint / CONFIG_NAME).is_file() and (checkpoint / "extra" / CONFIG_NAME).is_file()


@pytest.mark.parametrize("planted", ["config", "weights", "subfolder"])
def test_saving_never_writes_through_a_symlink(tmp_path, planted):
    model = _two_adapter_model()
    target, outside = tmp_path / "save", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    if planted == "subfolder":
        (target / "extra").symlink_to(outside, target_is_directory=True)
        (outside / CONFIG_NAME).write_text("precious")
    else:
        (target / (CONFIG_NAME if planted == "config" else WEIGHTS_NAME)).symlink_to(victim)
    with pytest.raises(AdapterFileError, match="symbolic link"):
        model.save_pretrained(target)
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in outside.iterdir()) == sorted(
        ["victim.txt"] + ([CONFIG_NAME] if planted == "subfolder" else [])
    )


def test_saving_into_a_file_fails_clearly(tmp_path):
    model = _two_adapter_model()
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(AdapterFileError, match="is a file"):
        model.save_pretrained(path)


# ----------------------------------------------------------------------------- loaded values
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_tensors_in_an_adapter_file_are_refused(saved, bad):
    from safetensors.torch import load_file, save_file

    w = saved / WEIGHTS_NAME
    tensors = load_file(str(w))
    key = sorted(tensors)[1]
    tensors[key].view(-1)[0] = bad
    save_file(tensors, str(w))
    base = tiny_model("llama")
    snap = _snapshot(base)
    with pytest.raises(AdapterFileError, match=f"{key}.*non-finite"):
        TTAdapterModel.from_pretrained(base, saved)
    assert _unchanged(base, snap)


def test_an_unreadable_weights_file_is_not_called_corrupted(saved, monkeypatch):
    from pathlib import Path

    real = Path.read_bytes

    def denied(self):
        if self.name == WEIGHTS_NAME:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(AdapterFileError, match="Permission denied") as info:
        TTAdapterModel.from_pretrained(tiny_model("llama"), saved)
    assert "corrupted" not in str(info.value)


def test_export_never_writes_through_a_symlink(tmp_path):
    pytest.importorskip("peft")
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    (out / "adapter_config.json").symlink_to(victim)
    with pytest.raises(AdapterFileError, match="symbolic link"):
        model.export_peft_lora(out, rank=4)
    assert victim.read_text() == "precious"


def test_saved_files_keep_ordinary_permissions(tmp_path):
    import stat

    model = _two_adapter_model()
    model.save_pretrained(tmp_path)
    assert stat.S_IMODE((tmp_path / CONFIG_NAME).stat().st_mode) == 0o644
    (tmp_path / WEIGHTS_NAME).chmod(0o640)
    model.save_pretrained(tmp_path)
    assert stat.S_IMODE((tmp_path / WEIGHTS_NAME).stat().st_mode) == 0o640
