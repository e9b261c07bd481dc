"""TT adapters over quantized bases: bitsandbytes 4-bit / 8-bit and torchao int8, on the CPU.

Tiny random models are saved once and loaded through transformers' ``BitsAndBytesConfig`` (the
path users take); torchao models are quantized with ``quantize_``. Everything runs for real:
bitsandbytes 0.50 and torchao run on this CPU.
"""

from __future__ import annotations

import logging
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    QuantizedMergeWarning,
    QuantizedTTAdapterLayer,
    TargetModulesError,
    TTAdapterModel,
    TTLoRAConfig,
    get_adapter_state_dict,
    get_tt_model,
    prepare_model_for_kbit_training,
)
from ttdecomp.adapters.testing import tiny_batch, tiny_model  # noqa: E402
from ttdecomp.errors import InvalidInputError  # noqa: E402
from ttdecomp.nn.quantized import (  # noqa: E402
    dequantized_weight,
    in_out_features,
    quantized_kind,
    unsupported_quantized,
)

BNB = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "8bit": dict(load_in_8bit=True),
}
KINDS = [*BNB, "torchao"]
EXPECTED_KIND = {"nf4": "bnb_4bit", "fp4-dq": "bnb_4bit", "nf4-dq": "bnb_4bit"}
EXPECTED_KIND |= {"8bit": "bnb_8bit", "torchao": "torchao_int8"}
QV = ["q_proj", "v_proj"]


@pytest.fixture(autouse=True)
def _quiet_bnb(monkeypatch):
    # bitsandbytes' 8-bit matmul logs a notice per call when it casts float32 inputs
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Saved tiny Llama, GPT-2 and BERT models (random, seeded)."""
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    # GPT-2 and BERT 64 wide (tiny_model's are 32): bitsandbytes' CPU 4-bit kernel needs at least
    # one quantization block (64 values) per input row
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=128, n_positions=64)
    )
    bert = BertForSequenceClassification(
        BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            vocab_size=128,
            max_position_embeddings=64,
        )
    )
    out = {}
    for kind, model in (("llama", tiny_model("llama")), ("gpt2", gpt2), ("bert", bert)):
        path = tmp_path_factory.mktemp(kind)
        model.save_pretrained(path)
        out[kind] = path
    return out


def load(folders, quant: str, kind: str = "llama"):
    """The tiny model of ``kind`` with quantization ``quant`` ("fp32", a BNB key, "torchao")."""
    if kind == "llama":
        auto = AutoModelForCausalLM
    elif kind == "gpt2":
        auto = AutoModelForCausalLM
    else:
        from transformers import AutoModelForSequenceClassification as auto
    if quant in BNB:
        extra = {"bnb_4bit_compute_dtype": torch.float32} if "load_in_4bit" in BNB[quant] else {}
        config = BitsAndBytesConfig(**BNB[quant], **extra)
        model = auto.from_pretrained(
            folders[kind], quantization_config=config, device_map="cpu", dtype=torch.float32
        )
    else:
        model = auto.from_pretrained(folders[kind], dtype=torch.float32)
        if quant == "torchao":
            from torchao.quantization import Int8WeightOnlyConfig, quantize_

            quantize_(model.model if kind == "llama" else model, Int8WeightOnlyConfig())
    return model.eval()


def q_proj(model):
    return model.get_submodule("model.layers.0.self_attn.q_proj")


# ------------------------------------------------------------------ layer kinds (nn.quantized)
@pytest.mark.parametrize("quant", KINDS)
def test_kinds_features_and_dequantized_weight(folders, quant):
    fp32 = q_proj(load(folders, "fp32")).weight.detach()
    layer = q_proj(load(folders, quant))
    assert quantized_kind(layer) == EXPECTED_KIND[quant]
    assert in_out_features(layer) == tuple(fp32.shape)[::-1]
    dense = dequantized_weight(layer)
    assert dense.dtype == torch.float32 and dense.shape == fp32.shape
    rel = float((dense - fp32).norm() / fp32.norm())
    assert rel < (0.15 if "4" in quant else 0.02), rel  # 4-bit rounds coarser than 8-bit
    assert rel > 0  # it is quantized
    assert quantized_kind(load(folders, "fp32").model.layers[0].self_attn.q_proj) is None


def test_unsupported_quantized_kinds_are_named(folders):
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = load(folders, "fp32")
    quantize_(model.model, Int8DynamicActivationInt8WeightConfig())
    assert quantized_kind(q_proj(model)) is None
    with pytest.raises(TargetModulesError, match=r"Int8Tensor.*not int8 weight-only.*supported"):
        get_tt_model(model, TTLoRAConfig(target_modules=QV))
    with pytest.raises(TargetModulesError, match="Int8Tensor"):
        get_tt_model(model, TTLoRAConfig(target_modules="all-linear"))

    class HQQLinear(torch.nn.Module):  # HQQ does not run here: its class name is what we see
        def __init__(self) -> None:
            super().__init__()
            self.W_q = torch.nn.Parameter(torch.zeros(8, 4, dtype=torch.uint8), False)

    net = torch.nn.Sequential(torch.nn.Linear(8, 8), HQQLinear())
    assert "HQQ" in unsupported_quantized(net[1])
    with pytest.raises(TargetModulesError, match=r"HQQLinear \(HQQ\).*bitsandbytes Linear4bit"):
        get_tt_model(net, TTLoRAConfig(target_modules="all-linear"))
    before = [type(m) for m in net.modules()]
    with pytest.raises(TargetModulesError, match="HQQLinear"):
        get_tt_model(net, TTLoRAConfig(target_modules=["1"]))
    assert [type(m) for m in net.modules()] == before  # nothing was wrapped


# ------------------------------------------------------------------ forward, gradients, training
def _configs():
    loretta = dict(tensor_rank=2, target_modules=QV, train_norms=False, train_head=False)
    return {
        "ttlora": TTLoRAConfig(tt_rank=2, alpha=4.0, init="paper", target_modules=QV),
        "rep": LoRETTAConfig(variant="rep", r=4, **loretta),
        "adp": LoRETTAConfig(variant="adp", bottleneck_size=8, **loretta),
    }


@pytest.mark.parametrize("quant", ["nf4", "fp4-dq", "8bit", "torchao"])
@pytest.mark.parametrize("method", ["ttlora", "rep", "adp"])
def test_forward_is_quantized_base_plus_tt_branch(folders, quant, method):
    config = _configs()[method]
    model = get_tt_model(load(folders, quant), config)
    layer = q_proj(model.base_model)
    assert isinstance(layer, QuantizedTTAdapterLayer)
    assert quantized_kind(layer.base_layer) == EXPECTED_KIND[quant]  # still quantized
    adapter = layer.tt_adapters["default"]
    assert adapter.compute_dtype == torch.float32
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        base = layer.base_layer(x)
        want = base + adapter(base if method == "adp" else x)
        got = layer(x)
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, base, atol=1e-4)  # the branch contributes
    if method != "adp":  # the parallel branch is x ΔWᵀ
        delta = adapter.delta_weight()
        assert torch.allclose(got, base + x @ delta.T, atol=1e-4, rtol=1e-4)


def _train(model, steps=12, lr=2e-2):
    batch = tiny_batch("llama")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def _train_config():
    return TTLoRAConfig(tt_rank=2, alpha=4.0, init="paper", target_modules="all-linear")


@pytest.mark.parametrize("quant", ["nf4", "8bit", "torchao"])
def test_training_lowers_loss_and_only_cores_get_gradients(folders, quant):
    model = get_tt_model(load(folders, quant), _train_config())
    wrapped = [m for m in model.base_model.modules() if isinstance(m, QuantizedTTAdapterLayer)]
    assert len(wrapped) == 2 * 7  # all-linear finds every quantized projection, not lm_head
    loss = model(**tiny_batch("llama")).loss
    loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".tt_adapters.default.cores." in n for n in trainable)
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable.values())
    frozen = [p for n, p in model.named_parameters() if n not in trainable]
    assert all(p.grad is None for p in frozen)
    model.zero_grad()
    losses = _train(model)
    assert losses[-1] < losses[0] - 0.05, losses
    assert quantized_kind(q_proj(model.base_model).base_layer) == EXPECTED_KIND[quant]


def test_training_after_inference_on_4bit_gets_gradients(folders):
    # bitsandbytes repacks 4-bit weights for its CPU kernel on an inference call (AVX512-BF16
    # CPUs), and that kernel has no backward; the adapters' guard unpacks before training
    model = get_tt_model(load(folders, "nf4"), _train_config())
    batch = tiny_batch("llama")
    with torch.no_grad():
        before = model(**batch).logits
    model(**batch).loss.backward()
    cores = [p for n, p in model.named_parameters() if "layers.0." in n and p.requires_grad]
    assert cores and all(bool(p.grad.abs().sum() > 0) for p in cores)
    with torch.no_grad():  # the same model (the CPU kernel rounds absmax to bfloat16)
        after = model(**batch).logits
    assert float((after - before).norm() / before.norm()) < 2e-2


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_other_architectures_on_4bit(folders, kind):
    model = get_tt_model(
        load(folders, "nf4", kind),
        TTLoRAConfig(tt_rank=2, init="paper", target_modules="all-linear"),
    )
    wrapped = [m for m in model.base_model.modules() if isinstance(m, QuantizedTTAdapterLayer)]
    assert wrapped and all(m.quant_kind == "bnb_4bit" for m in wrapped)
    batch = tiny_batch(kind)
    loss = model(**batch).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("quant", "ours"), [("nf4", True), ("nf4", False), ("8bit", True), ("torchao", True)]
)
def test_prepare_model_for_kbit_training(folders, quant, ours):
    import peft

    model = load(folders, quant)
    model.model.norm.weight.data = model.model.norm.weight.data.to(torch.bfloat16)
    prepare = prepare_model_for_kbit_training if ours else peft.prepare_model_for_kbit_training
    prepare(model, gradient_checkpointing_kwargs={"use_reentrant": True})
    assert model.model.norm.weight.dtype == torch.float32  # the norm is float32 again
    assert model.is_activation_checkpointing
    assert quantized_kind(q_proj(model)) == EXPECTED_KIND[quant]
    tt = get_tt_model(model, TTLoRAConfig(tt_rank=2, init="paper", target_modules=QV))
    tt.train()  # checkpointing runs in training mode only; re-entrant needs the input grads
    tt(**tiny_batch("llama")).loss.backward()
    grads = [p.grad for p in tt.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)


# ------------------------------------------------------------------ merging
@pytest.mark.parametrize("quant", ["nf4-dq", "8bit", "torchao"])
def test_merge_records_rounding_and_unmerge_restores(folders, quant):
    model = get_tt_model(load(folders, quant), _train_config())
    _train(model, steps=3)
    batch = tiny_batch("llama")
    with torch.no_grad():
        unmerged = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
    returned = model.merge_adapter()
    assert len(model.merge_rounding) == 14
    assert returned == model.merge_rounding  # what this merge cost, per layer
    assert model.merge_adapter() == {}  # nothing is merged twice, nothing rounds again
    for rounding in model.merge_rounding.values():
        r = rounding["default"]
        assert 0 < r.rounding_error < r.delta_norm  # it rounds, less than the adapter adds
    with torch.no_grad():
        merged = model(**batch).logits
    # the merge rounded, but kept most of what the adapter does
    assert 0 < (merged - unmerged).norm() < 0.5 * (base - unmerged).norm()
    layer = q_proj(model.base_model)  # the merged layer computes with the re-quantized weight
    x = torch.randn(2, layer.in_features)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ dequantized_weight(layer.base_layer).T, atol=2e-2)
    model.unmerge_adapter()  # the quantized weights kept at merge time come back exactly
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, unmerged)


@pytest.mark.parametrize("quant", ["nf4", "8bit", "torchao"])
def test_merge_and_unload_keeps_the_base_quantized(folders, quant):
    model = get_tt_model(load(folders, quant), _train_config())
    _train(model, steps=3)
    batch = tiny_batch("llama")
    with torch.no_grad():
        unmerged = model(**batch).logits
        with model.disable_adapter():
            base = model(**batch).logits
    plain = model.merge_and_unload()
    assert quantized_kind(q_proj(plain)) == EXPECTED_KIND[quant]
    assert set(model.merge_rounding) == {n for n, m in plain.named_modules() if quantized_kind(m)}
    assert plain.merge_rounding == model.merge_rounding  # the merged model carries its cost
    with torch.no_grad():
        merged = plain(**batch).logits
    assert 0 < (merged - unmerged).norm() < 0.5 * (base - unmerged).norm()


def test_merge_warns_when_rounding_exceeds_the_adapter(folders):
    tiny = TTLoRAConfig(tt_rank=2, alpha=1e-6, init="paper", target_modules=QV)
    model = get_tt_model(load(folders, "nf4"), tiny)
    with pytest.warns(QuantizedMergeWarning, match="more than the adapter's own"):
        model.merge_adapter()
    r = model.merge_rounding["model.layers.0.self_attn.q_proj"]["default"]
    assert r.rounding_error > r.delta_norm and r.relative > 1


def test_unmerge_refused_after_lossy_merge_and_adp_cannot_merge(folders):
    model = get_tt_model(load(folders, "nf4"), _train_config())
    layer = q_proj(model.base_model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizedMergeWarning)
        layer.merge(keep_original=False)
    kept = layer.base_layer.weight
    with pytest.raises(InvalidInputError, match=r"cannot unmerge.*keep_original"):
        layer.unmerge()
    assert layer.base_layer.weight is kept and layer.merged_adapters == ["default"]
    adp = LoRETTAConfig(variant="adp", target_modules=QV, train_norms=False, train_head=False)
    model = get_tt_model(load(folders, "8bit"), adp)
    with pytest.raises(InvalidInputError, match=r"non-linear|cannot be merged"):
        model.merge_adapter()
    with pytest.raises(InvalidInputError, match="non-linear"):
        q_proj(model.base_model).merge()


# ------------------------------------------------------------------ saving, loading, export
def test_save_load_on_quantized_and_across_bases(folders, tmp_path, caplog):
    model = get_tt_model(load(folders, "nf4"), _train_config())
    _train(model, steps=3)
    batch = tiny_batch("llama")
    with torch.no_grad():
        want = model(**batch).logits
    model.save_pretrained(tmp_path / "a")
    with caplog.at_level(logging.INFO, logger="ttdecomp.adapters.serialization"):
        same = TTAdapterModel.from_pretrained(load(folders, "nf4"), tmp_path / "a")
    assert not caplog.records  # same base: nothing to note
    with torch.no_grad():
        assert torch.equal(same(**batch).logits, want)
    # trained on 4-bit, loaded on fp32: same cores, a logged note on what differs
    with caplog.at_level(logging.INFO, logger="ttdecomp.adapters.serialization"):
        full = TTAdapterModel.from_pretrained(load(folders, "fp32"), tmp_path / "a")
    assert "bitsandbytes 4-bit nf4 weights and is loaded on a base with full-precision" in (
        caplog.text
    )
    sa = get_adapter_state_dict(same.base_model)
    sf = get_adapter_state_dict(full.base_model)
    assert sa.keys() == sf.keys() and all(torch.equal(sa[k], sf[k]) for k in sa)
    with torch.no_grad():
        got = full(**batch).logits
    assert not torch.equal(got, want) and torch.allclose(got, want, atol=1.0)
    # and the reverse: saved on fp32, loaded on 8-bit
    full.save_pretrained(tmp_path / "b")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ttdecomp.adapters.serialization"):
        TTAdapterModel.from_pretrained(load(folders, "8bit"), tmp_path / "b")
    assert "full-precision weights and is loaded on a base with bitsandbytes 8-bit" in caplog.text


@pytest.mark.parametrize("quant", ["nf4", "8bit", "torchao"])
def test_export_peft_lora_parity_on_the_same_quantized_base(folders, tmp_path, quant):
    from peft import PeftModel

    model = get_tt_model(load(folders, quant), TTLoRAConfig(tt_rank=2, target_modules=QV))
    _train(model, steps=3)
    batch = tiny_batch("llama")
    with torch.no_grad():
        ours = model(**batch).logits
    errors = model.export_peft_lora(tmp_path, rank=2)
    assert max(errors.values()) < 1e-6  # split layout, bond rank 2: exported exactly
    peft_model = PeftModel.from_pretrained(load(folders, quant), tmp_path).eval()
    # PEFT's own LoRA layer for the quantized kind (bitsandbytes', torchao's)
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert type(layer).__module__.endswith("torchao" if quant == "torchao" else "bnb")
    with torch.no_grad():
        theirs = peft_model(**batch).logits
    with torch.no_grad():
        base = load(folders, quant)(**batch).logits
    assert not torch.allclose(ours, base, atol=1e-3)  # the adapter changes the output
    assert torch.allclose(theirs, ours, atol=1e-4, rtol=1e-4)


def test_save_load_on_torchao_int8(folders, tmp_path, caplog):
    model = get_tt_model(load(folders, "torchao"), _train_config())
    _train(model, steps=2)
    batch = tiny_batch("llama")
    with torch.no_grad():
        want = model(**batch).logits
    model.save_pretrained(tmp_path)
    again = TTAdapterModel.from_pretrained(load(folders, "torchao"), tmp_path)
    with torch.no_grad():
        assert torch.equal(again(**batch).logits, want)
    with caplog.at_level(logging.INFO, logger="ttdecomp.adapters.serialization"):
        TTAdapterModel.from_pretrained(load(folders, "nf4"), tmp_path)
    assert "torchao int8 weight-only weights and is loaded on a base with bitsandbytes" in (
        caplog.text
    )


def _nf4_layer(double: bool):
    """A bitsandbytes NF4 layer 192 -> 128 (three 64-value blocks per row), seeded."""
    import bitsandbytes as bnb

    torch.manual_seed(0)
    dense = torch.nn.Linear(192, 128, bias=False)
    layer = bnb.nn.Linear4bit(
        192, 128, bias=False, compute_dtype=torch.float32, compress_statistics=double
    )
    layer.weight = bnb.nn.Params4bit(
        dense.weight.data.clone(), requires_grad=False, quant_type="nf4", compress_statistics=double
    )
    return layer.to("cpu")


@pytest.mark.parametrize("double", [False, True])
def test_unpacking_a_cpu_packed_4bit_weight_keeps_its_values(double):
    # bitsandbytes repacks on an inference call (AVX512-BF16 CPUs) and its own inverse leaves
    # single-quantized block scales out of order when a row has several blocks (192 = 3 x 64)
    from ttdecomp.nn.quantized import unpack_cpu_4bit_

    layer = _nf4_layer(double).eval()
    before = dequantized_weight(layer)
    x = torch.randn(4, 192)
    with torch.no_grad():
        packed_out = layer(x)
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack")
    assert unpack_cpu_4bit_(layer)
    after = dequantized_weight(layer)
    assert float((after - before).norm() / before.norm()) < 1e-2  # block scales in bfloat16
    assert torch.allclose(x @ after.T, packed_out, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("double", [False, True])
def test_guarded_4bit_layers_stay_the_loaded_base_over_evaluate_train_cycles(double):
    # the guard keeps the state before bitsandbytes repacks and restores it on unpacking: no
    # bfloat16 rounding of the block scales, no re-quantized double-quantized scales (which
    # bitsandbytes' own inverse gives, a new drift on every cycle)
    from ttdecomp.adapters import guard_4bit_backward

    layer = torch.nn.Sequential(_nf4_layer(double))
    assert guard_4bit_backward(layer) == 1
    loaded = dequantized_weight(layer[0]).clone()
    x = torch.randn(4, 192, requires_grad=True)
    packed = 0
    for _ in range(3):
        layer.eval()
        with torch.no_grad():
            layer(x.detach())  # an input without grad: what bitsandbytes repacks for
        packed += bool(getattr(layer[0].weight.quant_state, "packing_format_for_cpu", False))
        layer.train()
        y = layer(x)  # the guard unpacks: gradients flow
        y.sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0
        x.grad = None
        assert torch.equal(dequantized_weight(layer[0]), loaded)
    if not packed:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack")


def test_the_guard_sends_4bit_layers_the_cpu_repacking_cannot_take_to_the_plain_path():
    import bitsandbytes as bnb

    from ttdecomp.adapters import guard_4bit_backward
    from ttdecomp.nn.quantized import cpu_packable

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(32, 48, bias=True, compute_dtype=torch.float32)
    layer.weight = bnb.nn.Params4bit(torch.randn(48, 32), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    assert not cpu_packable(layer) and cpu_packable(_nf4_layer(False))
    model = torch.nn.Sequential(layer)
    guard_4bit_backward(model)
    x = torch.randn(3, 32)
    model.train()
    expected = model(x)
    model.eval()
    with torch.no_grad():  # bitsandbytes would repack here and fail on 32 inputs
        torch.testing.assert_close(model(x), expected.detach())
