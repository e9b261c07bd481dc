"""Options declared once (``ttdecomp.cli._options``), the validation helpers, the CLI conventions.

Nothing here trains: the parsers are built from the configs' fields and inspected, the configs
are checked, and the device choice is tested with CUDA's presence set by the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ttdecomp._validation import check_bool, check_choice, check_int, check_real
from ttdecomp.cli import build_parser, main
from ttdecomp.cli._options import add_options, apply_config_file, error_message, values
from ttdecomp.errors import InvalidInputError, InvalidOptionError

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from ttdecomp.finetune import FinetuneConfig  # noqa: E402
from ttdecomp.finetune.train import resolve_device, resolve_precision  # noqa: E402
from ttdecomp.search import SearchConfig  # noqa: E402

COMMANDS = {"finetune": FinetuneConfig, "search": SearchConfig}


def subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


# --- the validation helpers -------------------------------------------------------------------


@given(st.integers(-50, 50), st.integers(-20, 20), st.integers(0, 30))
def test_check_int_accepts_exactly_the_range(value, low, width):
    high = low + width
    if low <= value <= high:
        assert check_int(value, "n", low=low, high=high) == value
    else:
        with pytest.raises(InvalidOptionError, match=rf"n must be an integer in \[{low}, {high}\]"):
            check_int(value, "n", low=low, high=high)


@pytest.mark.parametrize("value", [True, False, 2.0, "3", None])
def test_check_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(InvalidOptionError) as err:
        check_int(value, "epochs", low=1)
    assert err.value.option == "epochs" and repr(value) in str(err.value)


def test_check_int_optional_takes_none():
    assert check_int(None, "eval_every", low=1, optional=True) is None


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0.5, True), (0, False), (1, False), (float("nan"), False), (float("inf"), False),
     (True, False), ("0.5", False)],
)  # fmt: skip
def test_check_real_open_interval(value, ok):
    if ok:
        assert check_real(value, "lr", low=0, high=1, low_open=True, high_open=True) == value
    else:
        with pytest.raises(InvalidOptionError, match=r"lr must be a finite number in \(0, 1\)"):
            check_real(value, "lr", low=0, high=1, low_open=True, high_open=True)


def test_check_choice_and_bool():
    assert check_choice("nf4", "bnb_4bit_quant_type", ("nf4", "fp4")) == "nf4"
    with pytest.raises(InvalidOptionError, match="one of nf4, fp4; got 'int4'"):
        check_choice("int4", "bnb_4bit_quant_type", ("nf4", "fp4"))
    with pytest.raises(InvalidOptionError):
        check_choice(True, "n", (1, 2))  # True == 1, but a bool is not a choice of 1
    assert check_bool(False, "quick") is False
    for value in (0, 1, "yes", None):
        with pytest.raises(InvalidOptionError, match="quick must be True or False"):
            check_bool(value, "quick")


# --- options declared once --------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_field_is_a_flag_and_the_cli_defaults_are_the_configs(command):
    config_class = COMMANDS[command]
    parser = subparser(command)
    dests = {a.dest for a in parser._actions}
    options = [f for f in dataclasses.fields(config_class) if "help" in f.metadata]
    assert options and all(f.name in dests for f in options)
    args = parser.parse_args([])
    for f in options:
        assert getattr(args, f.name) == f.default, f.name


def test_search_and_finetune_share_the_declarations_of_the_training_options():
    from ttdecomp.search.config import TRIAL_OPTIONS

    search, finetune = subparser("search"), subparser("finetune")
    theirs = {a.dest: a for a in finetune._actions}
    mine = {a.dest: a for a in search._actions}
    for name in ("model", "data", "targets", "device", "precision", "max_steps", "eval_every"):
        assert name in TRIAL_OPTIONS
        assert mine[name].default == theirs[name].default, name
        assert mine[name].help == theirs[name].help, name
        assert mine[name].option_strings == theirs[name].option_strings, name
    # the search's own options are its fields; the trial's go to its FinetuneConfig
    args = search.parse_args(["--epochs", "2", "--revision", "v1", "--quick"])
    trial = {name: getattr(args, name) for name in TRIAL_OPTIONS}
    own = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)
           if "help" in f.metadata}  # fmt: skip
    config = SearchConfig(**own, **trial)
    assert config.finetune.epochs == 2 and config.finetune.revision == "v1"
    assert config.finetune.batch_size == 16  # the search's --quick, not finetune's


def test_an_error_names_the_field_in_python_and_the_flag_on_the_command_line():
    with pytest.raises(InvalidOptionError) as err:
        FinetuneConfig(batch_size=0)
    assert str(err.value).startswith("batch_size must be an integer")
    cli = error_message(err.value, subparser("finetune"))
    assert cli.startswith("--batch-size must be an integer") and "batch_size" not in cli
    with pytest.raises(InvalidOptionError) as err:
        FinetuneConfig(sizes=(10, 0, 5))
    assert error_message(err.value, subparser("finetune")).startswith(
        "--train-size/--val-size/--test-size must be an integer >= 1"
    )
    # every option the message names, as Python spells it, is written as the command's flag
    with pytest.raises(InvalidOptionError) as err:
        FinetuneConfig(bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="bfloat16")
    assert "quantize='4bit'" in str(err.value)
    cli = error_message(err.value, subparser("finetune"))
    assert cli.startswith("--bnb-4bit-quant-type and --bnb-4bit-compute-dtype set")
    assert "(--quantize none); add --quantize 4bit or" in cli
    assert "bnb_4bit" not in cli and "quantize=" not in cli


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_each_real_default_once_and_examples(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "(default: None)" not in text and "default: True" not in text
    assert "default: False" not in text
    assert "--progress, --no-progress" in text and "--figures, --no-figures" in text
    assert "examples:\n  ttdecomp " + command in text
    assert "comma-separated" in text
    for action in subparser(command)._actions:
        assert (action.help or "").count("(default:") <= 1, action.dest
    assert "(default: 0)" in text  # a real default shown (--seeds / --seed)


def test_version_is_the_installed_packages(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ttdecomp {importlib.metadata.version('ttdecomp')}"


def test_one_list_syntax_comma_separated_or_repeated():
    parser = subparser("finetune")
    args = parser.parse_args(["--seeds", "0,1", "--seeds", "2", "--methods", "lora"])
    assert args.seeds == [0, 1, 2] and args.methods == ["lora"]
    args = parser.parse_args(["--lr", "tt-lora=1e-3", "--lr", "lora=2e-3", "--tt-shape", "4,4,4,4"])
    assert args.lr == {"tt-lora": 1e-3, "lora": 2e-3} and args.tt_shape == [4, 4, 4, 4]
    args = parser.parse_args(["--train-size", "40", "--test-size", "20"])
    assert args.sizes == (40, None, 20)
    search = subparser("search")
    args = search.parse_args(["--param", "lora.r=4,8", "--param", "tt-lora.lr=1e-3:1e-2"])
    assert args.params == ["lora.r=4,8", "tt-lora.lr=1e-3:1e-2"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--seeds", "0,x"])


# --- --config run.yaml ------------------------------------------------------------------------


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "methods: [tt-lora]\nbatch-size: 8\nlr: {tt-lora: 0.01}\ntrain_size: 40\n"
        "gradient-checkpointing: true\nseeds: 0,1\n"
    )
    parser = build_parser(["finetune"])
    apply_config_file(subparser_of(parser, "finetune"), path)
    args = parser.parse_args(["finetune", "--batch-size", "16"])
    assert args.methods == ["tt-lora"] and args.batch_size == 16  # the flag wins
    assert args.lr == {"tt-lora": 0.01} and args.sizes == (40, None, None)
    assert args.gradient_checkpointing is True and args.seeds == [0, 1]
    assert FinetuneConfig(**{k: getattr(args, k) for k in ("methods", "lr", "seeds")}).seeds == [
        0,
        1,
    ]


def subparser_of(parser, command):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochz: 3\n", "unknown option 'epochz'; valid ones are"),
        ("epochs: 3\nepochs: 4\n", "'epochs' is given twice"),
        ("batch-size: 8\nbatch_size: 8\n", "'batch_size' is given twice"),
        ("quick: 1\n", "quick must be true or false"),
        ("- epochs\n", "expected a mapping"),
        ("seeds: [0, x]\n", "'x' is not an integer"),
    ],
)
def test_bad_config_files_are_refused_before_any_work(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["finetune", "--config", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("ttdecomp finetune: error: --config")
    assert not out.exists()
    if "valid ones" in message:
        assert "batch-size" in err and "epochs" in err


# --- device, precision, quantization options --------------------------------------------------


def test_auto_device_takes_cuda_and_bf16_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_precision("auto", "cuda") == "bf16"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == "cuda:1"  # under torchrun: this process's GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda:1") == "fp32"
    with pytest.raises(InvalidInputError, match="does not support bf16"):
        resolve_precision("bf16", "cuda:1")


def test_auto_device_falls_back_to_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    assert resolve_precision("auto", "cpu") == "fp32"
    with pytest.raises(InvalidInputError, match="fp16 needs a GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        resolve_device("cuda")


def test_the_defaults_are_auto_not_cpu():
    config = FinetuneConfig()
    assert (config.device, config.precision) == ("auto", "auto")
    assert config.train_settings(0).device == "auto"
    assert SearchConfig().finetune_config().device == "auto"


def test_quantize_options_are_checked_and_not_silently_ignored(capsys):
    assert FinetuneConfig(quantize=None).quantize == "none"  # the Python API's "no quantization"
    assert FinetuneConfig(quantize="4bit").quantization_config().load_in_4bit
    with pytest.raises(InvalidOptionError, match="set the 4-bit quantization") as err:
        FinetuneConfig(bnb_4bit_quant_type="fp4")
    assert err.value.option == "bnb_4bit_quant_type"
    with pytest.raises(InvalidOptionError, match="one of none, 4bit, 8bit, int8"):
        FinetuneConfig(quantize="2bit")
    assert main(["finetune", "--quantize", "8bit", "--methods", "head-only"]) == 2
    assert "--methods" in capsys.readouterr().err


def test_resolved_options_round_trip():
    config = FinetuneConfig(methods=["lora"], seeds=[1, 2], quick=True, precision="fp32")
    again = FinetuneConfig(**json.loads(json.dumps(config.to_dict())))
    assert again == config


# --- missing extras ---------------------------------------------------------------------------

BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_without_torch_the_adapters_name_their_pip_install():
    done = run_without_torch(
        """
        import ttdecomp
        print("core ok", "torch" in sys.modules)
        try:
            import ttdecomp.adapters
        except ImportError as exc:
            print("ERROR", exc.name, "|", exc)
        """
    )
    assert "core ok False" in done.stdout, done.stderr
    assert "ERROR torch |" in done.stdout, done.stdout + done.stderr
    assert 'pip install "ttdecomp[torch]"' in done.stdout


def test_without_torch_the_command_names_the_extra(tmp_path):
    done = run_without_torch(
        f"""
        from ttdecomp.cli import main
        print("status", main(["finetune", "--quick", "--output", {str(tmp_path / "o")!r}]))
        print("status", main(["search", "--quick"]))
        """
    )
    assert done.stdout.split() == ["status", "2", "status", "2"], done.stdout + done.stderr
    assert "ttdecomp finetune: error: ttdecomp finetune needs torch" in done.stderr
    assert 'pip install "ttdecomp[finetune]"' in done.stderr
    assert 'pip install "ttdecomp[finetune,search]"' in done.stderr
    assert not (tmp_path / "o").exists()


def test_report_to_needs_its_package(capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: the Trainer's own integration runs")
    with pytest.raises(InvalidOptionError, match="needs the wandb package"):
        FinetuneConfig(report_to="wandb")
    assert main(["finetune", "--report-to", "wandb"]) == 2
    assert "--report-to wandb needs the wandb package" in capsys.readouterr().err


def test_positional_and_required_fields():
    @dataclasses.dataclass
    class Job:
        model: str = dataclasses.field(default="", metadata={"help": "a model", "positional": True})
        output: str = dataclasses.field(default="", metadata={"help": "folder", "required": True})
        targets: list | None = dataclasses.field(
            default=None, metadata={"help": "modules", "list": True}
        )

    parser = argparse.ArgumentParser()
    add_options(parser, Job)
    args = parser.parse_args(["minilm", "--output", "out", "--targets", "q,v"])
    assert Job(**values(args, Job)) == Job("minilm", "out", ["q", "v"])
    with pytest.raises(SystemExit):
        parser.parse_args(["minilm"])  # --output is required


def test_a_deeply_nested_config_file_is_one_line_naming_it(tmp_path, capsys):
    for depth in (100, 5000):  # over the limit; deep enough to exhaust Python's recursion
        path = tmp_path / f"run{depth}.yaml"
        path.write_text("seeds: " + "[" * depth + "]" * depth + "\n")
        assert main(["finetune", "--config", str(path)]) == 2
        assert f"--config {path} nests" in capsys.readouterr().err


def test_an_infinite_epoch_budget_is_refused():
    with pytest.raises(InvalidOptionError, match="epoch_budget must be a finite number"):
        SearchConfig(epoch_budget=float("inf"))
