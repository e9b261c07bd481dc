"""The capability table of docs/adapters.md, one test per row, for each of the three methods.

``CAPABILITIES`` is the table: the docs' table must say exactly this (checked below), and every
"yes" is exercised on a tiny model while every "no" is a clear error naming the reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    TTAdapterLayer,
    TTAdapterModel,
    TTLoRAConfig,
    get_adapter_state_dict,
    get_tt_model,
    set_adapter_state_dict,
)
from ttdecomp.adapters.testing import tiny_batch, tiny_model  # noqa: E402
from ttdecomp.errors import InvalidInputError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("tt-lora", "loretta-rep", "loretta-adp")

#: row -> (TT-LoRA, LoRETTA-rep, LoRETTA-adp), as the docs' table says it
CAPABILITIES = {
    "nn.Linear": ("yes", "yes", "yes"),
    "transformers Conv1D (GPT-2)": ("yes", "yes", "yes"),
    "bitsandbytes 4-bit base (NF4, FP4)": ("yes", "yes", "yes"),
    "bitsandbytes 8-bit base": ("yes", "yes", "yes"),
    "torchao int8 weight-only base": ("yes", "yes", "yes"),
    "multiple adapters": ("yes", "yes", "yes"),
    "mixed-adapter batches": ("yes", "yes", "yes"),
    "merging": ("yes", "yes", "no"),
    "conversion to LoRA": ("yes", "yes", "no"),
    "weighted adapters": ("yes", "no", "no"),
    "hot-swapping": ("yes", "yes", "yes"),
    "auxiliary modules": ("yes", "yes", "yes"),
}


def config(method: str, **kw):
    if method == "tt-lora":
        return TTLoRAConfig(tt_rank=2, alpha=2.0, init="paper", **kw)
    if method == "loretta-rep":
        return LoRETTAConfig(variant="rep", tensor_rank=2, r=4, **kw)
    return LoRETTAConfig(variant="adp", tensor_rank=2, bottleneck_size=8, **kw)


def supported(row: str, method: str) -> bool:
    return CAPABILITIES[row][METHODS.index(method)] == "yes"


def randomize(model, seed: int, adapter: str | None = None) -> None:
    """Non-zero values in every adapter tensor (or only ``adapter``'s)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ("tt_adapters" in n or "modules_to_save" in n) and (
                adapter is None or f".{adapter}." in f"{n}."
            ):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def adapted(method: str, kind: str = "llama", **kw) -> TTAdapterModel:
    torch.manual_seed(0)
    model = get_tt_model(tiny_model(kind), config(method, **kw))
    randomize(model, 0)
    return model.eval()


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


# ------------------------------------------------------------------ the table in the docs
def test_the_docs_table_says_what_the_tests_check():
    text = (ROOT / "docs" / "adapters.md").read_text()
    start = text.index("## Capabilities")
    rows = {}
    for line in text[start:].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 4 and cells[0] not in ("capability", ""):
            if set(cells[0]) <= {"-", " "}:
                continue
            rows[re.sub(r"[`*]", "", cells[0])] = tuple(
                re.match(r"\W*(yes|no|partial)", c).group(1) for c in cells[1:]
            )
    for row, values in CAPABILITIES.items():
        assert rows.get(row) == values, (row, rows.get(row), values)


# ------------------------------------------------------------------ target layer kinds
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("kind", "row"), [("llama", "nn.Linear"), ("gpt2", "transformers Conv1D (GPT-2)")]
)
def test_target_layer_kinds(method, kind, row):
    assert supported(row, method)
    batch = tiny_batch(kind, 2)
    model = adapted(method, kind)
    layers = [m for m in model.modules() if isinstance(m, TTAdapterLayer)]
    base_kind = "Conv1D" if kind == "gpt2" else "Linear"
    assert layers and all(type(m.base_layer).__name__ == base_kind for m in layers)
    with model.disable_adapter():
        base = logits(model, batch)
    assert not torch.allclose(logits(model, batch), base)  # the adapters act
    model.train()
    model(**batch).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


# ------------------------------------------------------------------ quantized bases
QUANTIZED_ROWS = {
    "nf4": "bitsandbytes 4-bit base (NF4, FP4)",
    "fp4": "bitsandbytes 4-bit base (NF4, FP4)",
    "8bit": "bitsandbytes 8-bit base",
    "torchao": "torchao int8 weight-only base",
}


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    tiny_model("llama").save_pretrained(path)
    return path


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("quant", list(QUANTIZED_ROWS))
def test_quantized_bases(method, quant, llama_folder):
    """The base stays quantized and frozen, the TT branch acts and trains (the quantized-bases
    guide and tests/test_adapters_quantized.py go through every kind and method in depth)."""
    import ttdecomp.adapters

    layer_type = getattr(ttdecomp.adapters, "QuantizedTTAdapterLayer", None)
    if layer_type is None:
        pytest.skip("this checkout has no quantized-base adapters (QuantizedTTAdapterLayer)")
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("torchao")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    assert supported(QUANTIZED_ROWS[quant], method)
    if quant == "torchao":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        base = AutoModelForCausalLM.from_pretrained(llama_folder, dtype=torch.float32)
        quantize_(base.model, Int8WeightOnlyConfig())
    else:
        bnb = {"8bit": {"load_in_8bit": True}}.get(quant) or {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": quant,
            "bnb_4bit_compute_dtype": torch.float32,
        }
        base = AutoModelForCausalLM.from_pretrained(
            llama_folder,
            quantization_config=BitsAndBytesConfig(**bnb),
            device_map="cpu",
            dtype=torch.float32,
        )
    torch.manual_seed(0)
    model = get_tt_model(base, config(method))
    randomize(model, 0)
    layers = [m for m in model.modules() if isinstance(m, TTAdapterLayer)]
    assert layers and all(isinstance(m, layer_type) for m in layers)
    assert all(not p.requires_grad for m in layers for p in m.base_layer.parameters())
    batch = tiny_batch("llama", 2)
    model.eval()
    with model.disable_adapter():
        plain = logits(model, batch)
    assert not torch.allclose(logits(model, batch), plain)
    model.train()
    model(**batch).loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert any("tt_adapters" in n for n in trained)  # the cores train, the base does not
    assert all("tt_adapters" in n or "modules_to_save" in n for n in trained), trained


# ------------------------------------------------------------------ several adapters
@pytest.mark.parametrize("method", METHODS)
def test_multiple_adapters(method):
    assert supported("multiple adapters", method)
    batch = tiny_batch("llama", 2)
    model = adapted(method)
    model.add_adapter("b", config(method))
    randomize(model, 1, "b")
    first = logits(model, batch)
    model.set_adapter("b")
    second = logits(model, batch)
    assert not torch.allclose(first, second)
    model.delete_adapter("default")
    assert list(model.tt_config) == ["b"]
    torch.testing.assert_close(logits(model, batch), second)


@pytest.mark.parametrize("method", METHODS)
def test_mixed_adapter_batches(method):
    assert supported("mixed-adapter batches", method)
    batch = tiny_batch("llama", 3)
    model = adapted(method)
    model.add_adapter("b", config(method))
    randomize(model, 1, "b")
    names = ["b", "__base__", "default"]
    mixed = logits(model, {**batch, "adapter_names": names})
    for row, name in enumerate(names):
        one = {k: v[row : row + 1] for k, v in batch.items()}
        if name == "__base__":
            with model.disable_adapter():
                alone = logits(model, one)
        else:
            model.set_adapter(name)
            alone = logits(model, one)
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ merging and LoRA
@pytest.mark.parametrize("method", METHODS)
def test_merging(method):
    batch = tiny_batch("llama", 2)
    model = adapted(method)
    before = logits(model, batch)
    if not supported("merging", method):
        with pytest.raises(InvalidInputError, match="no ΔW and cannot be merged"):
            model.merge_adapter()
        with pytest.raises(InvalidInputError, match="no ΔW and cannot be merged"):
            model.merge_and_unload()
        torch.testing.assert_close(logits(model, batch), before)  # left as it was
        return
    model.merge_adapter()
    torch.testing.assert_close(logits(model, batch), before, rtol=1e-4, atol=1e-5)
    model.unmerge_adapter()
    torch.testing.assert_close(logits(model, batch), before)
    merged = model.merge_and_unload()
    assert not any(isinstance(m, TTAdapterLayer) for m in merged.modules())
    torch.testing.assert_close(logits(merged, batch), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_conversion_to_lora(method, tmp_path):
    model = adapted(method)
    if not supported("conversion to LoRA", method):
        with pytest.raises(InvalidInputError, match="cannot be expressed as LoRA"):
            model.export_peft_lora(tmp_path / "lora", rank=8)
        assert not (tmp_path / "lora").exists()
        return
    peft = pytest.importorskip("peft")
    errors = model.export_peft_lora(tmp_path / "lora", rank=8)
    assert max(errors.values()) < 1e-5  # ΔW has rank <= 4 here: LoRA r=8 holds it exactly
    batch = tiny_batch("llama", 2)
    lora = peft.PeftModel.from_pretrained(tiny_model("llama"), tmp_path / "lora").eval()
    torch.testing.assert_close(logits(lora, batch), logits(model, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_weighted_adapters(method):
    model = adapted(method)
    model.add_adapter("b", config(method))
    randomize(model, 1, "b")
    if not supported("weighted adapters", method):
        reason = "LoRETTA-adp" if method == "loretta-adp" else "combines TT-LoRA adapters"
        with pytest.raises(InvalidInputError, match=reason):
            model.add_weighted_adapter(["default", "b"], [0.5, 0.5], "mix")
        assert "mix" not in model.tt_config
        return
    model.add_weighted_adapter(["default", "b"], [0.5, -2.0], "mix")
    for layer in (m for m in model.modules() if isinstance(m, TTAdapterLayer)):
        with torch.no_grad():
            expected = 0.5 * layer.get_delta_weight("default") - 2.0 * layer.get_delta_weight("b")
            torch.testing.assert_close(layer.get_delta_weight("mix"), expected)


# ------------------------------------------------------------------ hot-swapping
@pytest.mark.parametrize("method", METHODS)
def test_hot_swapping(method, tmp_path):
    """An adapter's tensors replaced in place (same parameters, so optimizers and compiled
    graphs holding them stay valid) by those of another adapter of the same config."""
    from safetensors.torch import load_file

    from ttdecomp.adapters import WEIGHTS_NAME

    assert supported("hot-swapping", method)
    batch = tiny_batch("llama", 2)
    other = adapted(method)
    randomize(other, 7)
    other.save_pretrained(tmp_path)
    expected = logits(other, batch)
    model = adapted(method)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not torch.allclose(logits(model, batch), expected)
    set_adapter_state_dict(model.base_model, load_file(tmp_path / WEIGHTS_NAME), "default")
    torch.testing.assert_close(logits(model, batch), expected)
    assert all(p is dict(model.named_parameters())[n] for n, p in params.items())
    if supported("merging", method):  # a merged adapter is not swapped under the weights
        model.merge_adapter()
        with pytest.raises(InvalidInputError, match="unmerge_adapter"):
            set_adapter_state_dict(model.base_model, get_adapter_state_dict(other.base_model))


# ------------------------------------------------------------------ auxiliary modules
@pytest.mark.parametrize("method", METHODS)
def test_auxiliary_modules(method, tmp_path):
    """modules_to_save: a full trainable copy of the head per adapter, saved with it."""
    assert supported("auxiliary modules", method)
    batch = tiny_batch("bert", 2)
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("bert"), config(method, modules_to_save=["classifier"]))
    randomize(model, 0)
    model.eval()
    head = [n for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    assert head and all("modules_to_save" in n for n in head)
    out = logits(model, batch)
    with model.disable_adapter():
        assert not torch.allclose(logits(model, batch), out)  # the original head is kept
    model.save_pretrained(tmp_path)
    fresh = TTAdapterModel.from_pretrained(tiny_model("bert"), tmp_path).eval()
    torch.testing.assert_close(logits(fresh, batch), out)
