"""ttdecomp.adapters serving: mixed-adapter batches, the cached fast path, many adapters,
status reports, the attribute allow-list and push_to_hub."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from adapter_helpers import alone as _alone  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    TTAdapterLayer,
    TTAdapterModel,
    TTLoRAConfig,
    get_tt_model,
)
from ttdecomp.adapters.testing import tiny_batch, tiny_model  # noqa: E402
from ttdecomp.contract import linear as tt_linear  # noqa: E402
from ttdecomp.errors import InvalidInputError, ShapeError  # noqa: E402
from ttdecomp.nn.fast import TTForwardCache, split_bond  # noqa: E402


def _randomize(model, scale: float = 0.3) -> None:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "tt_adapters" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * scale)


def _serving_llama() -> TTAdapterModel:
    """Tiny Llama with TT-LoRA ×2, LoRETTA-rep (q/v) and LoRETTA-adp (MLP), all non-zero."""
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2, init="paper"))
    model.add_adapter("tt_b", TTLoRAConfig(tt_rank=3, init="paper", layout="interleaved"))
    model.add_adapter("rep", LoRETTAConfig(variant="rep", tensor_rank=2, r=4))
    model.add_adapter("adp", LoRETTAConfig(variant="adp", tensor_rank=2, bottleneck_size=8))
    _randomize(model)
    return model.eval()


# ------------------------------------------------------------------ mixed batches
def test_mixed_batch_matches_each_row_alone_for_every_method() -> None:
    model = _serving_llama()
    ids = tiny_batch("llama", 6, seq=7, seed=3)["input_ids"]
    names = ["rep", "default", "__base__", "adp", "default", "tt_b"]
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).logits
        for i, name in enumerate(names):
            alone = _alone(model, name, input_ids=ids[i : i + 1]).logits[0]
            torch.testing.assert_close(mixed[i], alone, rtol=1e-5, atol=1e-5)
    # the rows really differ by adapter (the check above is not vacuous)
    assert not torch.allclose(mixed[1], _alone(model, "__base__", input_ids=ids[1:2]).logits[0])


def test_mixed_batch_routes_each_row_through_its_own_classifier_copy() -> None:
    base = tiny_model("bert")
    cfg = TTLoRAConfig(tt_rank=2, init="paper", modules_to_save=["classifier"])
    model = get_tt_model(base, cfg)
    model.add_adapter("other", cfg)
    _randomize(model, 1.0)
    model.eval()
    ids = tiny_batch("bert", 4, seed=5)["input_ids"]
    names = ["other", "default", "__base__", "other"]
    with torch.no_grad():
        mixed = model(input_ids=ids, adapter_names=names).logits
        for i, name in enumerate(names):
            torch.testing.assert_close(
                mixed[i], _alone(model, name, input_ids=ids[i : i + 1]).logits[0]
            )


def test_mixed_generate_matches_each_row_alone_greedy_and_with_beams() -> None:
    model = _serving_llama()
    ids = tiny_batch("llama", 4, seq=5, seed=7)["input_ids"]
    mask = torch.ones_like(ids)
    names = ["default", "rep", "__base__", "adp"]
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    out = model.generate(input_ids=ids, attention_mask=mask, adapter_names=names, **kw)
    beams = model.generate(
        input_ids=ids, attention_mask=mask, adapter_names=names, num_beams=2, **kw
    )
    for i, name in enumerate(names):
        row = {"input_ids": ids[i : i + 1], "attention_mask": mask[i : i + 1]}
        if name == "__base__":
            with model.disable_adapter():
                ref = model.generate(**row, **kw)
                ref_beam = model.generate(**row, num_beams=2, **kw)
        else:
            model.set_adapter(name)
            ref = model.generate(**row, **kw)
            ref_beam = model.generate(**row, num_beams=2, **kw)
        assert torch.equal(out[i], ref[0]), name
        assert torch.equal(beams[i], ref_beam[0]), name


def test_a_mixed_batch_runs_each_present_adapter_once_per_layer_not_each_loaded() -> None:
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2, init="paper"))
    for k in range(6):
        model.add_adapter(f"a{k}", TTLoRAConfig(tt_rank=2, init="paper"))
    model.eval()
    calls: dict[str, int] = {}
    for m in model.base_model.modules():
        if isinstance(m, TTAdapterLayer):
            for name, ad in m.tt_adapters.items():
                ad.register_forward_hook(
                    lambda mod, inp, out, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)
                )
    n_layers = len(model.targeted_module_names)
    ids = tiny_batch("llama", 8, seed=2)["input_ids"]
    names = ["a3", "a1", "a3", "__base__", "a1", "a3", "a1", "a1"]
    with torch.no_grad():
        model(input_ids=ids, adapter_names=names)
    assert calls == {"a1": n_layers, "a3": n_layers}


def test_adapter_names_bad_inputs_fail_before_any_work() -> None:
    model = _serving_llama()
    ids = tiny_batch("llama", 3)["input_ids"]
    with pytest.raises(InvalidInputError, match=r"not loaded.*'adp', 'default', 'rep', 'tt_b'"):
        model(input_ids=ids, adapter_names=["default", "nope", "default"])
    with pytest.raises(ShapeError, match="2 entries but the batch has 3 rows"):
        model(input_ids=ids, adapter_names=["default", "rep"])
    with pytest.raises(InvalidInputError, match="one adapter name per row"):
        model(input_ids=ids, adapter_names="default")
    with pytest.raises(InvalidInputError, match="not loaded"):
        model.generate(input_ids=ids, max_new_tokens=1, adapter_names=["x", "x", "x"])
    model.set_adapter("default")
    model.merge_adapter()
    with pytest.raises(InvalidInputError, match="unmerge_adapter"):
        model(input_ids=ids, adapter_names=["default", "rep", "default"])
    model.unmerge_adapter()
    model(input_ids=ids, adapter_names=["default", "rep", "default"])  # fine again


@pytest.mark.parametrize("how", ["get_tt_model", "add_adapter", "load_adapter", "from_pretrained"])
def test_base_is_a_reserved_adapter_name(tmp_path, how) -> None:
    """'__base__' routes rows to the base model, so no adapter may take that name."""
    cfg = TTLoRAConfig(tt_rank=2)
    base = tiny_model("llama")
    before = {n: p.clone() for n, p in base.state_dict().items()}
    with pytest.raises(InvalidInputError, match="'__base__' is reserved"):
        if how == "get_tt_model":
            get_tt_model(base, cfg, "__base__")
        elif how == "add_adapter":
            get_tt_model(base, cfg).add_adapter("__base__", cfg)
        else:
            get_tt_model(tiny_model("llama"), cfg).save_pretrained(tmp_path)
            if how == "load_adapter":
                get_tt_model(base, cfg).load_adapter(tmp_path, "__base__")
            else:
                TTAdapterModel.from_pretrained(base, tmp_path, "__base__")
    if how in ("get_tt_model", "from_pretrained"):  # refused before the model was touched
        assert not any(isinstance(m, TTAdapterLayer) for m in base.modules())
        assert all(torch.equal(p, before[n]) for n, p in base.state_dict().items())


# ------------------------------------------------------------------ the fast path
_LAYOUTS = {
    "split": ((1, 1, 4, 6), (6, 4, 1, 1)),
    "interleaved": ((3, 4, 2), (2, 6, 2)),
    "split-big": ((1, 1, 1, 8, 8, 4), (8, 8, 4, 1, 1, 1)),
}


def _cores(layout: str, rank: int, seed: int) -> list[torch.Tensor]:
    from ttdecomp.counts import max_ranks

    rows, cols = _LAYOUTS[layout]
    ranks = max_ranks(rows, cols, max_rank=rank)
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(ranks[k], m, n, ranks[k + 1], generator=g, dtype=torch.float64)
        for k, (m, n) in enumerate(zip(rows, cols))
    ]


@given(
    layout=st.sampled_from(sorted(_LAYOUTS)),
    rank=st.integers(1, 5),
    rows=st.sampled_from([1, 2, 3, 70]),
    scale=st.floats(-3, 3, allow_nan=False),
    seed=st.integers(0, 10_000),
)
def test_fast_path_agrees_with_contract_linear(layout, rank, rows, scale, seed) -> None:
    cores = _cores(layout, rank, seed)
    n_in = int(torch.tensor([c.shape[2] for c in cores]).prod())
    x = torch.randn(rows, 2, n_in, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cache = TTForwardCache(scale)
    ref = tt_linear(x, [*cores[:-1], cores[-1] * scale])
    with torch.no_grad():
        first = cache.linear(x, cores)
        second = cache.linear(x, cores)  # from the cached operands
    torch.testing.assert_close(first, ref)
    torch.testing.assert_close(second, ref)
    if rows * 2 <= 64:
        assert cache.kind == ("halves" if split_bond(cores) else cache.kind)
        assert cache.kind is not None and cache.cached_bytes > 0


def test_fast_path_cache_is_invalidated_when_cores_change_value_or_shape() -> None:
    ad_cfg = TTLoRAConfig(tt_rank=3, init="paper", target_modules=["0"])
    model = get_tt_model(torch.nn.Sequential(torch.nn.Linear(48, 48)), ad_cfg)
    layer = model.base_model[0]
    adapter = layer.tt_adapters["default"]
    x = torch.randn(1, 48)
    opt = torch.optim.SGD(adapter.parameters(), lr=0.5)
    for _ in range(2):  # train a step, then decode: the cache must see the new values
        model(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            torch.testing.assert_close(
                model(x), layer.base_layer(x) + x @ adapter.delta_weight().T, atol=1e-5, rtol=1e-5
            )
    with torch.no_grad():
        adapter.cores[0].mul_(2.0)  # in place, no optimizer
        torch.testing.assert_close(
            model(x), layer.base_layer(x) + x @ adapter.delta_weight().T, atol=1e-5, rtol=1e-5
        )
    # a core of another rank (shape change): plans and operands are rebuilt
    cores = list(adapter.cores)
    r = int(cores[0].shape[3])
    adapter.cores[0] = torch.nn.Parameter(torch.cat([cores[0], torch.ones_like(cores[0])], 3))
    adapter.cores[1] = torch.nn.Parameter(
        torch.cat([cores[1], torch.ones(r, *cores[1].shape[1:])], 0)
    )
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), layer.base_layer(x) + x @ adapter.delta_weight().T, atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fast_path_gradients_match_the_checked_path(dtype) -> None:
    # training on a split layout goes through the merged halves (x A) B, the checked path
    # through the planned contraction: equal to round-off (float32: relative to the largest)
    cores = [c.to(dtype).requires_grad_(True) for c in _cores("split-big", 4, 3)]
    ref_cores = [c.detach().clone().requires_grad_(True) for c in cores]
    x = torch.randn(5, 256, dtype=dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    cache = TTForwardCache(1.5)
    cache.linear(x, cores).square().sum().backward()
    tt_linear(x_ref, [*ref_cores[:-1], ref_cores[-1] * 1.5]).square().sum().backward()
    for got, want in [(x.grad, x_ref.grad), *((c.grad, r.grad) for c, r in zip(cores, ref_cores))]:
        if dtype == torch.float64:
            torch.testing.assert_close(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_fast_path_keeps_the_clear_errors_of_the_checked_path() -> None:
    cache = TTForwardCache()
    with pytest.raises(ShapeError):
        cache.linear(torch.randn(2, 7), [c.float() for c in _cores("split", 2, 0)])


# ------------------------------------------------------------------ many adapters
def test_loading_many_adapters_leaves_the_active_one_and_trains_nothing_else(tmp_path) -> None:
    model = get_tt_model(tiny_model("bert"), TTLoRAConfig(tt_rank=2, init="paper"))
    _randomize(model)
    saved = {}
    for k in range(12):
        _randomize(model)
        model.save_pretrained(tmp_path / f"a{k}")
        saved[f"a{k}"] = {
            n: p.detach().clone() for n, p in model.named_parameters() if "tt_adapters" in n
        }
    server = get_tt_model(tiny_model("bert"), TTLoRAConfig(tt_rank=2))
    for name in saved:
        server.load_adapter(tmp_path / name, name)
    assert server.active_adapters == ["default"]
    trainable = {n for n, p in server.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)
    ids = tiny_batch("bert", 4)["input_ids"]
    names = ["a3", "a11", "__base__", "a3"]
    with torch.no_grad():
        mixed = server(input_ids=ids, adapter_names=names).logits
        for i, name in enumerate(names):
            torch.testing.assert_close(
                mixed[i], _alone(server, name, input_ids=ids[i : i + 1]).logits[0]
            )
    # a7 is held packed (one flat parameter per layer): its state-dict keys are the module's
    state = server.state_dict()
    assert server.base_model.bert.encoder.layer[0].attention.self.query.tt_adapters.is_packed("a7")
    for n, v in saved["a7"].items():
        torch.testing.assert_close(state[n.replace(".default.", ".a7.")], v)


# ------------------------------------------------------------------ status
def test_model_and_layer_status_report_adapters_merges_and_irregular_layers() -> None:
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2, init="paper"))
    model.add_adapter("other", TTLoRAConfig(tt_rank=2, target_modules=["q_proj"]))
    st_ = model.get_model_status()
    assert st_.num_adapter_layers == 4 and st_.enabled is True
    assert st_.available_adapters == ["default", "other"]
    assert st_.methods == {"default": "tt-lora", "other": "tt-lora"}
    assert st_.requires_grad == {"default": True, "other": False}
    assert st_.trainable_params == model.get_nb_trainable_parameters()[0]
    layers = {s.name: s for s in model.get_layer_status()}
    q = layers["model.layers.0.self_attn.q_proj"]
    assert q.available_adapters == ["default", "other"] and q.active_adapters == ["default"]
    assert layers["model.layers.0.self_attn.v_proj"].available_adapters == ["default"]
    model.base_model.model.layers[0].self_attn.q_proj.merge(["default"])
    st_ = model.get_model_status()
    assert st_.merged_adapters == "irregular"
    model.merge_adapter()
    assert model.get_model_status().merged_adapters == ["default"]
    model.unmerge_adapter()
    model.disable_adapter_layers()
    assert model.get_model_status().enabled is False
    assert all(not s.enabled for s in model.get_layer_status())


# ------------------------------------------------------------------ attributes and the Hub
def test_only_allow_listed_attributes_are_forwarded_to_the_base_model() -> None:
    base = tiny_model("llama")
    model = get_tt_model(base, TTLoRAConfig(tt_rank=2))
    assert model.config is base.config and model.device == base.device
    assert model.generation_config is base.generation_config
    with pytest.raises(AttributeError, match="has no attribute"):
        model.save_pretrained_safely  # noqa: B018
    with pytest.raises(AttributeError, match=r"model\.base_model\.lm_head"):
        model.lm_head  # noqa: B018
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    assert model.num_parameters(only_trainable=True) == model.get_nb_trainable_parameters()[0]
    emb = sum(p.numel() for p in base.model.embed_tokens.parameters())
    # the LM head is tied to the embeddings, so it goes with them
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - emb
    assert type(model).push_to_hub is TTAdapterModel.push_to_hub


class _FakeHub(BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for create_repo + upload_folder (regular files)."""

    log: ClassVar[list] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.log.append((self.path, data))
        if self.path == "/api/repos/create":
            name = json.loads(data)["name"]
            self._reply({"url": f"http://{self.headers['Host']}/user/{name}", "name": name})
        elif "/preupload/" in self.path:
            files = json.loads(data)["files"]
            self._reply(
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]
                }
            )
        elif "/commit/" in self.path:
            host = self.headers["Host"]
            self._reply(
                {"commitUrl": f"http://{host}/user/x/commit/{'a' * 40}", "commitOid": "a" * 40}
            )
        else:
            self.send_response(404)
            self.end_headers()

    def do_GET(self) -> None:
        self.log.append((self.path, b""))
        self.send_response(404)
        self.end_headers()


def test_push_to_hub_uploads_only_the_adapter_folder(monkeypatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    _FakeHub.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
        model.add_adapter("other", TTLoRAConfig(tt_rank=2))
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        model.push_to_hub("user/tt-adapter", token="hf_fake", endpoint=endpoint)
    finally:
        server.shutdown()
        thread.join()
    commits = [data for path, data in _FakeHub.log if "/commit/" in path]
    assert len(commits) == 1
    lines = [json.loads(line) for line in commits[0].decode().splitlines() if line.strip()]
    files = {e["value"]["path"]: e["value"] for e in lines if e.get("key") == "file"}
    assert sorted(files) == [
        "other/ttdecomp_adapter.safetensors",
        "other/ttdecomp_config.json",
        "ttdecomp_adapter.safetensors",
        "ttdecomp_config.json",
    ]
    weights = base64.b64decode(files["ttdecomp_adapter.safetensors"]["content"])
    from safetensors.torch import load

    tensors = load(weights)
    assert tensors and all(".cores." in k for k in tensors)  # adapter cores, no base weight
    total = sum(t.numel() for t in tensors.values())
    assert total == sum(
        p.numel() for n, p in model.named_parameters() if "tt_adapters.default." in n
    )


def test_push_to_hub_refuses_offline_mode_and_a_bad_repo_id(monkeypatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2))
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InvalidInputError, match="HF_HUB_OFFLINE"):
        model.push_to_hub("user/x")
    with pytest.raises(InvalidInputError, match="repo_id"):
        model.push_to_hub("  ")
    with pytest.raises(InvalidInputError, match="unknown adapter"):
        model.push_to_hub("user/x", adapter_names=["nope"])


def test_default_tt_lora_init_starts_at_the_base_model_and_the_paper_init_does_not() -> None:
    ids = tiny_batch("llama", 2)["input_ids"]
    base = tiny_model("llama")
    with torch.no_grad():
        before = base(input_ids=ids).logits
        model = get_tt_model(base, TTLoRAConfig(tt_rank=3))
        assert TTLoRAConfig().init == "zero"
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
        paper = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, init="paper"))
        assert not torch.allclose(paper(input_ids=ids).logits, before)
    # with ΔW = 0 the last cores still get gradients, so training moves off the base model
    model.train()
    model(**tiny_batch("llama", 2)).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
