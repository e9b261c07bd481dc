"""Checkpoints saved quantized (``save_pretrained`` of a bitsandbytes or torchao model, as the
Hub's ``*-bnb-4bit`` repositories are): loaded as saved, fine-tuned by ``ttdecomp finetune``,
reloaded by ``load_finetuned``; what cannot work is refused before any weight is read.

A tiny Llama 64 wide (bitsandbytes' CPU 4-bit kernel needs 64-value blocks) built from its
config, quantized on load from its float32 checkpoint and saved.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

from ttdecomp.assets import load_pretrained  # noqa: E402
from ttdecomp.assets.quantized import count_quantized_layers, saved_kind  # noqa: E402
from ttdecomp.cli import main  # noqa: E402
from ttdecomp.errors import InvalidInputError  # noqa: E402
from ttdecomp.finetune import load_finetuned, load_results  # noqa: E402
from ttdecomp.finetune.quantization import quantization_config  # noqa: E402
from ttdecomp.finetune.testing import (  # noqa: E402
    tiny_causal_folder,
    tiny_classifier_folder,
    toy_sentiment_csv,
)

KINDS = {
    # kind: (quantize option, 4-bit data type)
    "nf4": ("4bit", "nf4"),
    "fp4": ("4bit", "fp4"),
    "8bit": ("8bit", None),
    "int8": ("int8", None),
}


def _config(kind: str, *, task: str = "causal"):
    quantize, quant_type = KINDS[kind]
    extra = {"bnb_4bit_quant_type": quant_type} if quant_type else {}
    return quantization_config(quantize, task=task, **extra)


def _tiny_llama(folder):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_folder(folder.parent / "gpt2"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """``(full-precision folder, {kind: folder saved quantized that way})``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("saved-quantized")
    full = _tiny_llama(root / "full")
    saved = {}
    for kind in KINDS:
        model = AutoModelForCausalLM.from_pretrained(
            full, quantization_config=_config(kind), device_map="cpu", dtype=torch.float32
        )
        saved[kind] = root / kind
        model.save_pretrained(saved[kind])
        AutoTokenizer.from_pretrained(full).save_pretrained(saved[kind])
    return full, saved


def _logits(model, seed=0):
    ids = torch.randint(
        0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_saved_quantized_checkpoint_loads_as_saved(llama, kind):
    full, saved = llama
    on_load = load_pretrained(full, task="causal", quantization_config=_config(kind))
    as_saved = load_pretrained(saved[kind], task="causal")  # no quantization option given
    assert count_quantized_layers(as_saved) == count_quantized_layers(on_load) == 14
    q_proj = as_saved.model.layers[0].self_attn.q_proj
    expected = {"nf4": "Linear4bit", "fp4": "Linear4bit", "8bit": "Linear8bitLt"}
    assert type(q_proj).__name__ == expected.get(kind, "Linear")
    # the same packed weights: the same outputs as quantizing the float32 checkpoint on load
    torch.testing.assert_close(_logits(as_saved), _logits(on_load), rtol=0, atol=0)
    # passing the same quantization again is accepted (and changes nothing)
    again = load_pretrained(saved[kind], task="causal", quantization_config=_config(kind))
    torch.testing.assert_close(_logits(again), _logits(on_load), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kind", "requested", "saved_as", "asked"),
    [
        ("nf4", "8bit", "bitsandbytes 4-bit nf4", "bitsandbytes 8-bit"),
        ("nf4", "fp4", "bitsandbytes 4-bit nf4", "bitsandbytes 4-bit fp4"),
        ("8bit", "int8", "bitsandbytes 8-bit", "torchao Int8WeightOnlyConfig"),
        ("int8", "nf4", "torchao Int8WeightOnlyConfig", "bitsandbytes 4-bit nf4"),
    ],
)
def test_another_quantization_than_the_saved_one_is_refused(
    llama, kind, requested, saved_as, asked
):
    # transformers would load the saved weights and silently ignore the config it was given
    _, saved = llama
    with pytest.raises(InvalidInputError) as info:
        load_pretrained(saved[kind], task="causal", quantization_config=_config(requested))
    message = str(info.value)
    assert f"saved quantized ({saved_as})" in message and f"loaded as {asked}" in message
    assert "--quantize" in message


def test_the_4bit_compute_dtype_is_applied_to_a_saved_checkpoint(llama):
    _, saved = llama
    config = quantization_config("4bit", task="causal", bnb_4bit_compute_dtype="bfloat16")
    model = load_pretrained(saved["nf4"], task="causal", quantization_config=config)
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(layers) == 14 and {m.compute_dtype for m in layers} == {torch.bfloat16}


@pytest.mark.parametrize("method", ["gptq", "awq", "hqq"])
def test_a_quantization_the_adapters_cannot_wrap_is_refused_before_reading_weights(
    llama, tmp_path, method
):
    _, saved = llama
    folder = tmp_path / method
    folder.mkdir()
    for f in saved["nf4"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": method, "bits": 4}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"not read")  # a read would fail otherwise
    with pytest.raises(InvalidInputError, match=f"saved quantized with {method}, which"):
        load_pretrained(folder, task="causal")
    with pytest.raises(InvalidInputError, match="bitsandbytes 4-bit"):
        saved_kind(config["quantization_config"])


def test_a_quantization_that_converts_no_layer_is_refused(tmp_path):
    # torchao converts nn.Linear only; GPT-2's layers are transformers' Conv1D
    gpt2 = tiny_causal_folder(tmp_path / "gpt2")
    with pytest.raises(InvalidInputError) as info:
        load_pretrained(gpt2, task="causal", quantization_config=_config("int8"))
    message = str(info.value)
    assert "quantized no layer of GPT2LMHeadModel" in message and "Conv1D" in message
    assert "--quantize 4bit or 8bit" in message
    # bitsandbytes converts Conv1D
    model = load_pretrained(gpt2, task="causal", quantization_config=_config("8bit"))
    assert count_quantized_layers(model) > 0


SMALL = ["--quick", "--no-progress", "--no-figures", "--jobs", "1", "--threads", "1"]


def test_finetune_trains_beside_a_saved_4bit_base_and_the_runs_reload(llama, tmp_path, capsys):
    from ttdecomp.finetune import FinetuneConfig
    from ttdecomp.finetune.tasks import get_task
    from ttdecomp.finetune.tasks.lm_eval import evaluate_lm

    _, saved = llama
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(saved["nf4"]), "--output", str(out), *SMALL]
    assert main([*argv, "--methods", "tt-lora,lora"]) == 0
    printed = capsys.readouterr()
    printed = printed.out + printed.err  # the start banner is said on stderr
    assert "base bitsandbytes 4-bit nf4, saved quantized" in printed
    results = load_results(out)
    assert results["config"]["base"] == "bitsandbytes 4-bit nf4, saved quantized"
    rows = {r["method"]: r for r in results["rows"]}
    assert set(rows) == {"tt-lora", "lora"}
    for row in rows.values():
        assert row["test_loss"] < row["test_loss_before"]  # training lowered the loss
    # the reloaded run (the base loaded as saved, the adapter put on it) gives the run's loss
    config = FinetuneConfig(model=str(saved["nf4"]), quick=True)
    job = get_task("causal").prepare(config, saved["nf4"])
    from ttdecomp.assets.chat_tokens import make_collator

    for method, row in rows.items():
        model, tokenizer = load_finetuned(out, method, model=saved["nf4"])
        assert count_quantized_layers(model) == 14
        loss = evaluate_lm(model, job.datasets["test"], make_collator(tokenizer))["loss"]
        assert loss == pytest.approx(row["test_loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "8bit"], "--quantize 8bit asks for an 8bit base, but"),
        (["--quantize", "int8"], "is saved quantized as 4bit (bitsandbytes 4-bit nf4)"),
        (
            ["--quantize", "4bit", "--bnb-4bit-quant-type", "fp4"],
            "cannot be loaded as bitsandbytes 4-bit fp4",
        ),
    ],
)
def test_finetune_refuses_to_requantize_a_saved_base(llama, tmp_path, capsys, extra, message):
    _, saved = llama
    out = tmp_path / "run"
    code = main(["finetune", "--model", str(saved["nf4"]), "--output", str(out), *SMALL, *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before the output folder is made


def test_head_only_is_refused_on_a_saved_quantized_classifier(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    bert = tiny_classifier_folder(tmp_path / "bert", hidden=64)
    model = AutoModelForSequenceClassification.from_pretrained(
        bert, quantization_config=_config("8bit", task="classification"), device_map="cpu"
    )
    model.save_pretrained(tmp_path / "bert-8bit")
    AutoTokenizer.from_pretrained(bert).save_pretrained(tmp_path / "bert-8bit")
    data = toy_sentiment_csv(tmp_path / "toy.csv", n=120)
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(tmp_path / "bert-8bit"), "--data", str(data)]
    code = main([*argv, "--output", str(out), *SMALL, "--methods", "head-only,lora"])
    assert code == 2
    err = capsys.readouterr().err
    assert "head-only has no adapter" in err and "saved quantized as 8bit" in err
    assert "--methods" in err and not out.exists()


def test_compress_refuses_a_saved_quantized_checkpoint(llama, tmp_path, capsys):
    _, saved = llama
    out = tmp_path / "compressed"
    code = main(["compress", str(saved["nf4"]), "--budget", "50%", "--output", str(out)])
    assert code == 2
    assert "saved quantized (bitsandbytes 4-bit nf4)" in capsys.readouterr().err
    assert not out.exists()
