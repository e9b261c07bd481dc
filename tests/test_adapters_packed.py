"""ttdecomp.adapters.packed: frozen TT-LoRA adapters held packed (memory per adapter, mixed
batches, state dicts, promotion), and folders written by earlier versions still loading."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from adapter_helpers import alone as _alone  # noqa: E402

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    TTAdapterLayer,
    TTAdapterModel,
    TTLoRAAdapter,
    TTLoRAConfig,
    get_adapter_state_dict,
    get_tt_model,
)
from ttdecomp.adapters.testing import tiny_batch, tiny_model  # noqa: E402

#: Two adapters saved by ttdecomp 4576f46 (before packing) on ``tiny_model("bert")``: ``default``
#: (TT-LoRA r=2 on query and value) and ``head/`` (r=3 on query, with the classifier as
#: modules_to_save).
OLD_FOLDER = Path(__file__).parent / "data" / "adapters_v1"


def _layers(model: TTAdapterModel) -> list[TTAdapterLayer]:
    return [m for m in model.base_model.modules() if isinstance(m, TTAdapterLayer)]


def _packed_server(tmp_path: Path, n: int = 4, seed: int = 0) -> tuple[TTAdapterModel, list[str]]:
    """A tiny Llama serving ``n`` TT-LoRA adapters loaded from folders (so held packed)."""
    source = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2, init="paper"))
    torch.manual_seed(seed)
    names = [f"a{k}" for k in range(n)]
    for k, name in enumerate(names):
        with torch.no_grad():
            for p in source.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn_like(p) * 0.5 / (k + 1))
        source.save_pretrained(tmp_path / name)
    server = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2)).eval()
    for name in names:
        server.load_adapter(tmp_path / name, name)
    return server, names


def test_loaded_tt_lora_adapters_are_packed_and_a_mixed_batch_builds_no_module(tmp_path) -> None:
    server, names = _packed_server(tmp_path)
    layers = _layers(server)
    assert all(layer.tt_adapters.is_packed(n) for layer in layers for n in names)
    # 6 rows of 24 tokens: a0's 3 rows are 72 > CACHE_MAX_ROWS (the planned path), the others
    # take the cached-operands path
    ids = tiny_batch("llama", 6, seq=24, seed=3)["input_ids"]
    rows = ["a0", "a2", "a0", "__base__", "a3", "a0"]
    with torch.no_grad():
        mixed = server(input_ids=ids, adapter_names=rows).logits
    assert all(layer.tt_adapters.is_packed(n) for layer in layers for n in names)
    with torch.no_grad():
        for i, name in enumerate(rows):  # set_adapter promotes the adapter to its module
            alone = _alone(server, name, input_ids=ids[i : i + 1]).logits[0]
            torch.testing.assert_close(mixed[i], alone, rtol=1e-5, atol=1e-5)
    assert not any(layer.tt_adapters.is_packed("a0") for layer in layers)
    assert all(type(layer.tt_adapters["a0"]) is TTLoRAAdapter for layer in layers)
    assert all(layer.tt_adapters.is_packed("a1") for layer in layers)  # never used
    assert not torch.allclose(mixed[0], mixed[1])


def test_mixed_generate_over_packed_adapters_matches_each_row_alone(tmp_path) -> None:
    server, _ = _packed_server(tmp_path, 3)
    ids = tiny_batch("llama", 3, seq=5, seed=7)["input_ids"]
    rows = ["a1", "__base__", "a2"]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    out = server.generate(input_ids=ids, adapter_names=rows, **kw)
    for i, name in enumerate(rows):
        if name == "__base__":
            with server.disable_adapter():
                ref = server.generate(input_ids=ids[i : i + 1], **kw)
        else:
            server.set_adapter(name)
            ref = server.generate(input_ids=ids[i : i + 1], **kw)
        n = ref.shape[1]  # a row that met EOS alone is padded in the batch
        assert torch.equal(out[i, :n], ref[0]) and bool((out[i, n:] == 0).all()), name


def test_packed_adapters_keep_the_state_dict_keys_and_values_of_their_modules(tmp_path) -> None:
    server, names = _packed_server(tmp_path, 3)
    promoted = copy.deepcopy(server)
    for layer in _layers(promoted):
        layer.tt_adapters.promote_all()
        assert layer.tt_adapters.n_packed == 0
    packed_sd, module_sd = server.state_dict(), promoted.state_dict()
    assert sorted(packed_sd) == sorted(module_sd)
    assert any(".tt_adapters.a1.cores.0" in k for k in packed_sd)
    for k, v in module_sd.items():
        assert torch.equal(packed_sd[k], v), k
    # loading a state dict into packed adapters (strict) writes their values
    other, _ = _packed_server(tmp_path / "other", 3, seed=1)
    assert not torch.equal(other.state_dict()[_key(names[1])], packed_sd[_key(names[1])])
    other.load_state_dict(module_sd)
    for k, v in module_sd.items():
        assert torch.equal(other.state_dict()[k], v), k
    bad = dict(module_sd)
    bad[_key(names[1]).replace("cores.0", "cores.9")] = torch.zeros(1)
    with pytest.raises(RuntimeError, match=r"Unexpected key.*a1\.cores\.9"):
        other.load_state_dict(bad)
    del bad[_key(names[1])]
    with pytest.raises(RuntimeError, match=r"Missing key.*a1\.cores\.0"):
        other.load_state_dict({k: v for k, v in bad.items() if not k.endswith("cores.9")})


def _key(name: str) -> str:
    return f"base_model.model.layers.0.self_attn.q_proj.tt_adapters.{name}.cores.0"


def test_packed_adapters_save_train_merge_combine_and_report_status(tmp_path) -> None:
    server, names = _packed_server(tmp_path, 3)
    layers = _layers(server)
    status = server.get_model_status()
    assert status.requires_grad["a1"] is False and "a2" in status.available_adapters
    assert all(layer.tt_adapters.is_packed("a1") for layer in layers)  # status built none
    trainable, total = server.get_nb_trainable_parameters()
    assert total == sum(p.numel() for p in server.parameters())
    # saving writes the packed adapters' files as their modules would
    server.save_pretrained(tmp_path / "resaved")
    from safetensors.torch import load_file

    for name in names:
        a = load_file(tmp_path / name / "ttdecomp_adapter.safetensors")
        b = load_file(tmp_path / "resaved" / name / "ttdecomp_adapter.safetensors")
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert all(layer.tt_adapters.is_packed("a1") for layer in layers)
    # activating promotes and trains
    server.train()
    server.set_adapter("a1")
    assert all(not layer.tt_adapters.is_packed("a1") for layer in layers)
    params = [p for p in server.parameters() if p.requires_grad]
    assert params and sum(p.numel() for p in params) == trainable
    batch = tiny_batch("llama", 2)
    server(**batch).loss.backward()
    assert all(p.grad is not None for p in params)
    # merging, combining and exporting an inactive packed adapter promote it on the way
    assert server.add_weighted_adapter(["a0", "a2"], [1.0, -0.5], "mix")
    server.eval()
    server.merge_adapter(["a2"])
    server.unmerge_adapter()
    assert server.export_peft_lora(tmp_path / "peft", rank=2, adapter_name="a0")
    server.delete_adapter("a0")
    assert all("a0" not in layer.tt_adapters for layer in layers)


def test_packed_adapters_follow_dtype_casts_and_only_tt_lora_is_packed(tmp_path) -> None:
    server, _ = _packed_server(tmp_path, 2)
    server.double()
    layer = _layers(server)[0]
    assert layer.tt_adapters.parameters_of("a1")[0].dtype == torch.float64
    ids = tiny_batch("llama", 2)["input_ids"]
    with torch.no_grad():
        mixed = server(input_ids=ids, adapter_names=["a1", "a0"]).logits
        assert mixed.dtype == torch.float64
        torch.testing.assert_close(mixed[0], _alone(server, "a1", input_ids=ids[:1]).logits[0])
    rep = get_tt_model(tiny_model("llama"), LoRETTAConfig(variant="rep", tensor_rank=2, r=4))
    rep.save_pretrained(tmp_path / "rep")
    server.float().load_adapter(tmp_path / "rep", "rep")
    assert not layer.tt_adapters.is_packed("rep") and "rep" in layer.tt_adapters


# ------------------------------------------------------------------ folders of earlier versions
def test_folders_saved_before_packing_load_packed_and_active(tmp_path) -> None:
    from safetensors.torch import load_file

    model = TTAdapterModel.from_pretrained(tiny_model("bert"), OLD_FOLDER)
    model.load_adapter(OLD_FOLDER / "head", "head")
    query = model.base_model.bert.encoder.layer[0].attention.self.query
    assert not query.tt_adapters.is_packed("default") and query.tt_adapters.is_packed("head")
    for folder, name in ((OLD_FOLDER, "default"), (OLD_FOLDER / "head", "head")):
        saved = load_file(folder / "ttdecomp_adapter.safetensors")
        got = get_adapter_state_dict(model.base_model, name)
        assert sorted(got) == sorted(saved) and any(k.startswith("classifier.") for k in got) == (
            name == "head"
        )
        assert all(torch.equal(got[k], saved[k]) for k in saved), name
    ids = tiny_batch("bert", 3, seed=4)["input_ids"]
    rows = ["head", "default", "__base__"]
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=rows).logits
        for i, name in enumerate(rows):
            torch.testing.assert_close(
                mixed[i], _alone(model, name, input_ids=ids[i : i + 1]).logits[0]
            )
    model.save_pretrained(tmp_path)
    for sub in ("", "head"):
        old = json.loads((OLD_FOLDER / sub / "ttdecomp_config.json").read_text())
        new = json.loads((tmp_path / sub / "ttdecomp_config.json").read_text())
        assert new["modules"] == old["modules"] and new["config"] == old["config"]


# ------------------------------------------------------------------ memory
_MEMORY_CHILD = textwrap.dedent(
    """
    import gc, json, sys, tempfile, time
    import torch
    from transformers import BertConfig, BertForSequenceClassification
    from ttdecomp.adapters import TTLoRAConfig, get_tt_model

    def rss():
        gc.collect()
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmRSS:"))

    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = BertForSequenceClassification(BertConfig(
        hidden_size=384, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        vocab_size=64, max_position_embeddings=32))
    cfg = TTLoRAConfig(tt_rank=4, init="paper", target_modules=["query", "value"])
    model = get_tt_model(base, cfg).eval()
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    per = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    for i in range(20):  # warm-up: allocator pools, lru caches
        model.load_adapter(folder, f"w{i}")
    n = int(sys.argv[1])
    rss0, cpu0 = rss(), time.process_time()
    for i in range(n):
        model.load_adapter(folder, f"a{i}")
    cpu = time.process_time() - cpu0
    print(json.dumps({"per": per, "added": (rss() - rss0) / n, "cpu_per_load": cpu / n}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_hundreds_of_loaded_adapters_take_resident_memory_within_4x_their_parameters() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, "300"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["per"] == 4 * 448 * 4  # 4 targets x 448 cores values x float32
    assert r["added"] <= 4 * r["per"], r
    assert r["cpu_per_load"] < 0.05, r  # "seconds for a thousand": about 3 ms measured here
