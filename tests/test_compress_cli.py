"""``ttdecomp compress`` end to end on a tiny BERT saved to disk (the packaged tokenizer)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ttdecomp.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    try:
        from ttdecomp.assets.registry import model_path

        tok_path = model_path("minilm")
    except Exception as exc:  # the packaged tokenizer is an optional asset
        pytest.skip(f"packaged MiniLM not installed: {exc}")
    folder = tmp_path_factory.mktemp("tiny-bert")
    cfg = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tok_path).save_pretrained(folder)
    texts = folder / "texts.txt"
    texts.write_text("\n".join(f"tweet number {i} about the weather {i % 7}" for i in range(48)))
    return folder, texts


def test_compress_command_writes_a_reloadable_model(tiny_bert, tmp_path, capsys):
    folder, texts = tiny_bert
    out = tmp_path / "out"
    code = main(
        [
            "compress",
            str(folder),
            "--budget",
            "50%",
            "--calibration",
            str(texts),
            "--calibration-size",
            "16",
            "--eval-size",
            "16",
            "--heal",
            "--heal-seconds",
            "5",
            "--heal-steps",
            "3",
            "--heal-size",
            "16",
            "--threads",
            "1",
            "--no-progress",
            "--output",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "out.err" in printed and "mean cosine" in printed and "healing: 3 steps" in printed
    record = json.loads((out / "report.json").read_text())
    assert record["report"]["n_params"] <= 0.5 * record["report"]["dense_n_params"]
    assert len(record["report"]["layers"]) == 12  # 6 linear layers x 2 encoder layers
    assert 0 < record["measured"]["cosine"] <= 1.0 + 1e-6
    from ttdecomp.compress import TTLinear, load_compressed

    fresh = load_compressed(transformers.BertModel.from_pretrained(folder), out)
    assert isinstance(fresh.encoder.layer[0].attention.self.query, TTLinear)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--output", "o"], "--budget"),
        (["--budget", "5", "--output", "o"], "minimum"),
        (["--budget", "50%", "--targets", "nope", "--output", "o"], "matches no module"),
        (["--budget", "50%", "--calibration", "missing.txt", "--output", "o"], "missing.txt"),
        (["--budget", "50%", "--heal", "--heal-cache-gb", "-1", "--output", "o"], "-1.0 must be"),
        (["--budget", "50%", "--heal", "--heal-cache-gb", "nan", "--output", "o"], "finite number"),
        (["--budget", "50%", "--heal", "--heal-cache-gb", "inf", "--output", "o"], "inf must be"),
        (
            ["--budget", "50%", "--heal-steps", "5", "--output", "o"],
            "without --heal;",
        ),
        (["--budget", "50%", "--heal-size", "0", "--heal", "--output", "o"], "--heal-size 0 must"),
        (["--budget", "10M", "--output", "o"], "not below the dense size"),
    ],
)
def test_compress_command_bad_input(tiny_bert, tmp_path, capsys, argv, needle):
    folder, texts = tiny_bert
    argv = [a if a != "o" else str(tmp_path / "o") for a in argv]
    if "--calibration" not in argv:
        argv = [*argv, "--calibration", str(texts), "--calibration-size", "8"]
    code = main(["compress", str(folder), *argv, "--eval-size", "8", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("ttdecomp compress: error:") and needle in err
    assert not (tmp_path / "o").exists()


def test_compress_command_unknown_model(capsys):
    assert main(["compress", "no-such-model", "--budget", "50%", "--output", "x"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_healing_texts_never_include_held_out_ones(tmp_path):
    from ttdecomp.compress.inputs import encoder_texts

    path = tmp_path / "texts.txt"
    path.write_text("\n".join(f"text {i}" for i in range(100)))
    cal, healing, held = encoder_texts(str(path), (10, 60, 20))
    assert cal == [f"text {i}" for i in range(10)]
    assert held == [f"text {i}" for i in range(10, 30)]
    assert len(healing) == 60 and not set(healing) & set(held)
    assert healing[:10] == cal and healing[10] == "text 30"


def test_tweet_healing_texts_go_beyond_the_training_split():
    pytest.importorskip("ttdecomp.assets.registry").data_path("tweets")
    from ttdecomp.compress.inputs import encoder_texts
    from ttdecomp.finetune.data import load_classification

    s = load_classification("tweets", sizes=(1000, 300, 600))
    cal, healing, held = encoder_texts("tweets", (256, 5000, 600))
    train = [t for t, _ in s.train]
    assert cal == train[:256] and held == [t for t, _ in s.test]
    assert len(healing) == len(set(healing)) == 5000 and healing[:1000] == train
    assert not set(healing) & (set(held) | {t for t, _ in s.validation})
    assert encoder_texts("tweets", (256, 300, 600))[1] == train[:300]


def test_options_are_checked_before_the_model_is_looked_up(capsys):
    argv = ["compress", "no-such-model", "--budget", "50%", "--heal-lr", "0.1", "--output", "x"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "--heal-lr 0.1 is a healing option, given without --heal; add --heal" in err
        and "unknown model" not in err
    )


def test_output_is_checked_before_the_model_is_loaded(tiny_bert, tmp_path, capsys):
    folder, texts = tiny_bert
    before = sorted(p.name for p in folder.iterdir())
    base = ["compress", str(folder), "--budget", "50%", "--calibration", str(texts)]
    assert main([*base, "--output", str(folder)]) == 2
    assert "is the model's own folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == before
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([*base, "--output", str(blocker / "out")]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_healing_keeps_the_compression(tiny_bert, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    folder, texts = tiny_bert
    out = tmp_path / "out"
    argv = [sys.executable, "-P", "-u", "-m", "ttdecomp", "compress", str(folder)]
    argv += ["--budget", "50%", "--calibration", str(texts), "--calibration-size", "16"]
    argv += ["--eval-size", "16", "--heal", "--heal-seconds", "120", "--heal-steps", "100000"]
    argv += ["--heal-size", "16", "--threads", "1", "--no-progress", "--output", str(out)]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        for line in proc.stdout:
            if line.startswith("saved the compression"):
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "healing interrupted" not in err and "interrupted" in err
    record = json.loads((out / "report.json").read_text())
    assert record["heal"] == "not finished" and record["measured"] is None
    from ttdecomp.compress import TTLinear, load_compressed

    fresh = load_compressed(transformers.BertModel.from_pretrained(folder), out)
    assert isinstance(fresh.encoder.layer[1].output.dense, TTLinear)
