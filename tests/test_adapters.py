"""ttdecomp.adapters: configs, target selection, injection, forward, init, training, counts."""

from __future__ import annotations

import math
import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from ttdecomp.adapters import (  # noqa: E402
    LoRETTAConfig,
    TargetModulesError,
    TTAdapterLayer,
    TTLoRAConfig,
    config_from_dict,
    get_tt_model,
    inspect_targets,
)
from ttdecomp.adapters.testing import tiny_model  # noqa: E402
from ttdecomp.errors import (  # noqa: E402
    InvalidInputError,
    RankClippedWarning,
    RankError,
    ShapeError,
)
from ttdecomp.tt_matrix import TTMatrix  # noqa: E402

METHODS = {
    "tt-lora": lambda **kw: TTLoRAConfig(tt_rank=3, alpha=2.0, **kw),
    "loretta-rep": lambda **kw: LoRETTAConfig(variant="rep", tensor_rank=3, r=4, **kw),
    "loretta-adp": lambda **kw: LoRETTAConfig(
        variant="adp", tensor_rank=3, bottleneck_size=8, **kw
    ),
}


def _inputs(kind: str, batch: int = 2, seq: int = 8, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 128, (batch, seq), generator=g)
    out = {"input_ids": ids}
    if kind in ("roberta", "bert"):
        out["labels"] = torch.randint(0, 2, (batch,), generator=g)
    else:
        out["labels"] = ids
    return out


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tt_rank": 0}, RankError),
        ({"tt_rank": 2.5}, RankError),
        ({"alpha": float("nan")}, InvalidInputError),
        ({"init": "kaiming"}, InvalidInputError),
        ({"layout": "mixed"}, InvalidInputError),
        ({"layout": "interleaved", "tt_shape": [4, 8, 8, 4]}, ShapeError),
        ({"dropout": 1.0}, InvalidInputError),
        ({"tt_shape": [768]}, ShapeError),
        ({"tt_shape": [64, 0, 3]}, RankError),
        ({"tt_shape": {}}, ShapeError),
        ({"target_modules": []}, TargetModulesError),
        ({"target_modules": "("}, TargetModulesError),
        ({"target_modules": ["q_proj", ""]}, TargetModulesError),
        ({"layers_to_transform": [-1]}, TargetModulesError),
        ({"n_cores": 1}, ShapeError),
    ],
)
def test_ttlora_config_rejects_bad_values(kwargs, error):
    with pytest.raises(error):
        TTLoRAConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "side"},
        {"tensor_rank": 0},
        {"r": -1},
        {"bottleneck_size": 0},
        {"non_linearity": "softmax"},
        {"init": "paper"},
    ],
)
def test_loretta_config_rejects_bad_values(kwargs):
    with pytest.raises((InvalidInputError, RankError)):
        LoRETTAConfig(**kwargs)


def test_config_dict_round_trip():
    for cfg in (
        TTLoRAConfig(tt_rank=5, tt_shape={"q_proj": [16, 4, 4, 4, 4, 16]}, dropout=0.1),
        LoRETTAConfig(variant="adp", bottleneck_size=16, modules_to_save=["score"]),
    ):
        assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InvalidInputError, match="unknown keys"):
        config_from_dict({"method": "tt-lora", "rank": 4})
    with pytest.raises(InvalidInputError, match="method"):
        config_from_dict({"method": "lora"})


# ----------------------------------------------------------------------------- targets
@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("llama", {"q_proj", "v_proj"}),
        ("gpt2", {"c_attn"}),
        ("roberta", {"query", "value"}),
        ("bert", {"query", "value"}),
    ],
)
def test_default_targets_are_query_and_value(kind, expected):
    model = get_tt_model(tiny_model(kind), TTLoRAConfig(tt_rank=2))
    names = model.targeted_module_names
    assert {n.rsplit(".", 1)[-1] for n in names} == expected
    assert len(names) == 2 * len(expected)  # two layers
    for n in names:
        assert isinstance(model.base_model.get_submodule(n), TTAdapterLayer)


def test_gqa_and_conv1d_shapes():
    infos = {i.name: i for i in inspect_targets(tiny_model("llama"), TTLoRAConfig())}
    v = infos["model.layers.0.self_attn.v_proj"]
    assert (v.out_features, v.in_features) == (32, 64)
    cores = v.tt_matrices["cores"]
    assert math.prod(cores["row_shape"]) == 32 and math.prod(cores["col_shape"]) == 64
    gpt = inspect_targets(tiny_model("gpt2"), TTLoRAConfig())[0]
    assert (gpt.module_type, gpt.out_features, gpt.in_features) == ("Conv1D", 96, 32)


def test_loretta_adp_default_placements():
    bert = inspect_targets(tiny_model("bert"), LoRETTAConfig(variant="adp"))
    assert [i.name.split("layer.0.")[-1] for i in bert if ".layer.0." in i.name] == [
        "attention.output.dense",
        "output.dense",
    ]
    gpt2 = inspect_targets(tiny_model("gpt2"), LoRETTAConfig(variant="adp"))
    assert {(i.name.split("h.0.")[-1], i.module_type) for i in gpt2 if ".h.0." in i.name} == {
        ("attn.c_proj", "Conv1D"),
        ("mlp.c_proj", "Conv1D"),
    }
    llama = inspect_targets(tiny_model("llama"), LoRETTAConfig(variant="adp"))
    assert {i.name.rsplit(".", 1)[-1] for i in llama} == {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_modules": ["q_proj", "qq_proj"]}, "'qq_proj' matches no module"),
        ({"target_modules": "model\\.nothing.*"}, "matches no module"),
        ({"target_modules": ["self_attn"]}, "nn.Linear or transformers Conv1D"),
        ({"target_modules": ["q_proj"], "exclude_modules": ["k_projj"]}, "matches no module"),
        ({"target_modules": ["q_proj"], "layers_to_transform": [0, 7]}, r"indices \[7\]"),
        ({"target_modules": ["q_proj"], "exclude_modules": ["q_proj"]}, "no module is left"),
        ({"target_modules": ["q_proj"], "modules_to_save": ["scoree"]}, "matches no module"),
        ({"target_modules": ["q_proj"], "tt_shape": {"k_proj": [16, 4, 4, 16]}}, "match none"),
    ],
)
def test_bad_targets_raise_before_any_change(kwargs, match):
    model = tiny_model("llama")
    before = _state(model)
    modules_before = [type(m) for m in model.modules()]
    with pytest.raises(TargetModulesError, match=match):
        get_tt_model(model, TTLoRAConfig(**kwargs))
    assert [type(m) for m in model.modules()] == modules_before
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_tt_shape_that_does_not_fit_raises():
    with pytest.raises(ShapeError, match="out_features=32"):
        inspect_targets(tiny_model("llama"), TTLoRAConfig(tt_shape=[16, 4, 4, 16]))
    prime = nn.Sequential(nn.Linear(1031, 1031))  # 1031 is prime: no useful factorisation
    with pytest.raises(ShapeError, match=r"module '0' \(1031 x 1031\).*n_cores"):
        inspect_targets(prime, LoRETTAConfig(target_modules=["0"]))
    with pytest.raises(TargetModulesError, match="no default targets"):
        inspect_targets(nn.Sequential(nn.Linear(4, 4)), TTLoRAConfig())
    with pytest.raises(TypeError, match="TTLoRAConfig or LoRETTAConfig"):
        inspect_targets(tiny_model("llama"), {"tt_rank": 4})


def test_per_module_shapes_and_regex_and_layers():
    cfg = TTLoRAConfig(
        target_modules=r"model\.layers\.\d+\.self_attn\.(q|v)_proj",
        tt_shape={"q_proj": [8, 8, 8, 8], "v_proj": ((1, 1, 4, 8), (8, 8, 1, 1))},
        layers_to_transform=[1],
        layers_pattern="layers",
    )
    infos = inspect_targets(tiny_model("llama"), cfg)
    assert [i.name for i in infos] == [
        "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj",
    ]
    assert infos[0].tt_matrices["cores"]["col_shape"] == (8, 8, 1, 1)
    assert infos[1].tt_matrices["cores"]["row_shape"] == (1, 1, 4, 8)


def test_interleaved_layout_from_the_planner():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=3, layout="interleaved"))
    layer = model.base_model.model.layers[0].self_attn.q_proj
    cores = layer.tt_adapters["default"].cores
    assert all(c.shape[1] > 1 and c.shape[2] > 1 for c in cores)
    x = torch.randn(2, 64)
    with torch.no_grad():
        expected = layer.base_layer(x) + x @ layer.get_delta_weight("default").T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_all_linear_skips_output_head():
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2, target_modules="all-linear"))
    names = model.targeted_module_names
    assert len(names) == 2 * 7 and "lm_head" not in names


# ----------------------------------------------------------------------------- counts
def test_published_parameter_counts_on_meta_device():
    from transformers import LlamaConfig, LlamaForCausalLM, RobertaConfig, RobertaModel

    with torch.device("meta"):
        roberta = RobertaModel(RobertaConfig())
    cfg = TTLoRAConfig(tt_rank=4, tt_shape=[64, 4, 3, 3, 4, 64], target_modules=["query", "value"])
    model = get_tt_model(roberta, cfg)
    assert model.get_nb_trainable_parameters()[0] == 17_664
    assert sum(i.n_params for i in inspect_targets(roberta, cfg)) == 17_664

    llama_cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=14336,
        num_hidden_layers=32,
        vocab_size=128256,
    )
    with torch.device("meta"):
        llama = LlamaForCausalLM(llama_cfg)
    cfg = TTLoRAConfig(
        tt_rank=10,
        tt_shape={
            "q_proj": [16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 4, 16],
            "v_proj": [16, 4, 4, 4, 2, 2, 2, 2, 4, 4, 16],
        },
    )
    model = get_tt_model(llama, cfg)
    assert model.get_nb_trainable_parameters()[0] == 212_480


# ----------------------------------------------------------------------------- init & forward
@pytest.mark.parametrize("kind", ["llama", "gpt2", "roberta", "bert"])
@pytest.mark.parametrize("method", list(METHODS))
def test_zero_init_keeps_base_outputs(kind, method):
    base = tiny_model(kind)
    inputs = _inputs(kind)
    inputs.pop("labels")
    with torch.no_grad():
        expected = base(**inputs).logits
    model = get_tt_model(
        base,
        METHODS[method](init="zero", train_head=False, train_norms=False)
        if method != "tt-lora"
        else METHODS[method](init="zero"),
    )
    with torch.no_grad():
        got = model(**inputs).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_paper_init_unit_norm_cores_and_nonzero_delta():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=4, init="paper"))
    layer = model.base_model.model.layers[0].self_attn.q_proj
    for core in layer.tt_adapters["default"].cores:
        assert torch.linalg.vector_norm(core).item() == pytest.approx(1.0, rel=1e-5)
    assert layer.get_delta_weight("default").abs().max() > 0


def test_ttsvd_init_is_a_tt_svd_of_a_random_matrix():
    # At a rank that reaches every attainable rank, TT-SVD is exact: ΔW / alpha is then the
    # Kaiming-uniform (a = √5) matrix itself, entries uniform in ±1/√in (variance 1/(3·in)).
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 48))
    cfg = TTLoRAConfig(tt_rank=64, alpha=2.0, init="ttsvd", target_modules=["0"])
    with pytest.warns(RankClippedWarning):  # 64 is above what the end bonds carry
        delta = get_tt_model(net, cfg).base_model[0].get_delta_weight("default") / 2.0
    bound = 1 / math.sqrt(64)
    assert delta.abs().max() <= bound * (1 + 1e-5)
    assert delta.abs().max() > 0.95 * bound
    assert delta.square().mean().item() == pytest.approx(1 / (3 * 64), rel=0.1)
    # At a low rank it is a truncation: smaller norm than the random matrix, but not zero.
    torch.manual_seed(0)
    low = get_tt_model(
        nn.Sequential(nn.Linear(64, 48)),
        TTLoRAConfig(tt_rank=2, init="ttsvd", target_modules=["0"]),
    )
    low_delta = low.base_model[0].get_delta_weight("default") / 8.0
    assert 0 < torch.linalg.norm(low_delta) < torch.linalg.norm(delta)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["tt-lora", "loretta-rep"])
def test_unmerged_forward_equals_dense_delta(kind, method):
    torch.manual_seed(3)
    model = get_tt_model(tiny_model(kind), METHODS[method]())
    name = model.targeted_module_names[0]
    layer = model.base_model.get_submodule(name)
    x = torch.randn(3, 5, layer.in_features)
    delta = layer.get_delta_weight("default")
    dense = delta.T if layer.fan_in_fan_out else delta  # (out, in)
    with torch.no_grad():
        expected = layer.base_layer(x) + x @ dense.T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_loretta_adp_forward_is_residual_bottleneck():
    torch.manual_seed(0)
    model = get_tt_model(tiny_model("bert"), METHODS["loretta-adp"]())
    layer = model.base_model.bert.encoder.layer[0].output.dense
    ad = layer.tt_adapters["default"]
    with torch.no_grad():
        nn.init.normal_(ad.down_bias)
        nn.init.normal_(ad.up_bias)
        x = torch.randn(4, layer.in_features)
        y = layer.base_layer(x)
        down = TTMatrix(list(ad.down_cores)).full()
        up = TTMatrix(list(ad.up_cores)).full()
        expected = y + torch.relu(y @ down.T + ad.down_bias) @ up.T + ad.up_bias
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["rep", "adp"])
def test_loretta_gaussian_entry_variance(variant):
    """Entries of every TT-matrix have variance 1/(rows + cols).

    One init gives m = mean(W²)·(rows + cols) with E[m] = 1. Over n independent inits the
    mean of m is asymptotically normal (CLT), so a two-sided z-test at |z| < 4 (p ≈ 6e-5 of a
    false alarm; the seed is fixed, so the test is deterministic) checks the variance, and the
    z-statistic would be ≫ 4 for a variance off by 10%.
    """
    torch.manual_seed(1234)
    cfg = LoRETTAConfig(
        variant=variant,
        target_modules=["0"],
        tensor_rank=5,
        r=8,
        bottleneck_size=16,
        train_norms=False,
        train_head=False,
    )
    model = get_tt_model(nn.Sequential(nn.Linear(48, 40)), cfg)
    ad = model.base_model[0].tt_adapters["default"]
    names = ("a_cores", "b_cores") if variant == "rep" else ("down_cores", "up_cores")
    samples = {n: [] for n in names}
    for _ in range(800):
        ad.reset_parameters("gaussian")
        for n in names:
            full = TTMatrix(list(getattr(ad, n))).full()
            samples[n].append(full.square().mean().item() * sum(full.shape))
    for n in names:
        m = torch.tensor(samples[n], dtype=torch.float64)
        z = (m.mean() - 1.0) / (m.std() / len(m) ** 0.5)
        assert abs(z.item()) < 4.0, (n, m.mean().item(), z.item())
        # Power: the same data rejects a 10% wrong variance.
        z_wrong = (m.mean() - 1.1) / (m.std() / len(m) ** 0.5)
        assert abs(z_wrong.item()) > 4.0, (n, z_wrong.item())


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("llama", "tt-lora"),
        ("gpt2", "tt-lora"),
        ("roberta", "loretta-rep"),
        ("bert", "loretta-adp"),
        ("llama", "loretta-adp"),
    ],
)
def test_loss_decreases(kind, method):
    torch.manual_seed(0)
    model = get_tt_model(tiny_model(kind), METHODS[method]())
    model.train()
    inputs = _inputs(kind, batch=4, seq=8)
    frozen = {k: v.clone() for k, v in model.base_model.named_parameters() if not v.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in model.base_model.named_parameters():
        if k in frozen:
            assert torch.equal(v, frozen[k]), k


def test_loretta_trains_norms_and_head_as_copies():
    model = get_tt_model(tiny_model("roberta"), LoRETTAConfig())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("LayerNorm.modules_to_save.default" in n for n in trainable)
    assert any("classifier.modules_to_save.default" in n for n in trainable)
    assert not any("original_module" in n for n in trainable)
    plain = get_tt_model(tiny_model("roberta"), LoRETTAConfig(train_norms=False, train_head=False))
    assert all("tt_adapters" in n for n, p in plain.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- properties
_DIMS = st.sampled_from([4, 6, 8, 12, 16, 24, 32, 48])


@given(
    out_f=_DIMS,
    in_f=_DIMS,
    rank=st.integers(1, 4),
    layout=st.sampled_from(["split", "interleaved"]),
)
def test_property_counts_forward_and_merge(out_f, in_f, rank, layout):
    from ttdecomp.counts import tt_matrix_n_params

    torch.manual_seed(out_f * 1000 + in_f * 10 + rank)
    net = nn.Sequential(nn.Linear(in_f, out_f))
    original = net[0].weight.detach().clone()
    cfg = TTLoRAConfig(tt_rank=rank, alpha=1.5, layout=layout, target_modules=["0"])
    info = inspect_targets(net, cfg)[0]
    cores = info.tt_matrices["cores"]
    model = get_tt_model(net, cfg)
    expected_count = tt_matrix_n_params(cores["row_shape"], cores["col_shape"], rank)
    assert info.n_params == expected_count == model.get_nb_trainable_parameters()[0]
    layer = model.base_model[0]
    x = torch.randn(3, in_f)
    with torch.no_grad():
        delta = layer.get_delta_weight("default")
        assert delta.shape == (out_f, in_f)
        unmerged = layer(x)
        torch.testing.assert_close(
            unmerged, layer.base_layer(x) + x @ delta.T, rtol=1e-5, atol=1e-5
        )
        model.merge_adapter()
        torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
    assert torch.equal(layer.base_layer.weight, original)


# ----------------------------------------------------------------------------- hostile configs
@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LoRETTAConfig, {"train_norms": "no"}),
        (LoRETTAConfig, {"train_head": 1}),
        (LoRETTAConfig, {"alpha": True}),
        (LoRETTAConfig, {"variant": ["rep"]}),
        (LoRETTAConfig, {"non_linearity": 1}),
        (TTLoRAConfig, {"alpha": True}),
        (TTLoRAConfig, {"alpha": "8"}),
        (TTLoRAConfig, {"init": b"zero"}),
        (TTLoRAConfig, {"layout": ["split"]}),
        (TTLoRAConfig, {"base_model_name_or_path": 7}),
        (TTLoRAConfig, {"dropout": "0.1"}),
        (TTLoRAConfig, {"layers_pattern": 3}),
    ],
)
def test_every_config_field_has_a_strict_type(cls, kwargs):
    (field,) = kwargs
    with pytest.raises(InvalidInputError, match=field):
        cls(**kwargs)


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+b",
        r"(\w*)*x",
        "(a|aa)*$",
        r"(.*\.)*q_proj",
        r"(q)\1",
        "a" * 1001,
    ],
)
@pytest.mark.parametrize("where", ["string", "list", "exclude", "tt_shape"])
def test_catastrophic_regexes_are_refused_before_matching(pattern, where):
    kwargs = {
        "string": {"target_modules": pattern},
        "list": {"target_modules": ["q_proj", pattern]},
        "exclude": {"target_modules": ["q_proj"], "exclude_modules": [pattern]},
        "tt_shape": {"target_modules": ["q_proj"], "tt_shape": {pattern: [16, 4, 4, 16]}},
    }[where]
    with pytest.raises(TargetModulesError, match=r"backtrack|characters|backreference"):
        TTLoRAConfig(**kwargs)


def test_a_crafted_pattern_in_a_saved_config_does_not_hang_loading(tmp_path):
    import json

    from ttdecomp.adapters import CONFIG_NAME, AdapterFileError, TTAdapterModel

    get_tt_model(tiny_model("llama"), TTLoRAConfig(tt_rank=2)).save_pretrained(tmp_path)
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    record["config"]["target_modules"] = "(" + "a*" * 30 + ")*b"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(AdapterFileError, match="backtrack"):
        TTAdapterModel.from_pretrained(tiny_model("llama"), tmp_path)


def test_bounded_safe_regexes_still_work():
    cfg = TTLoRAConfig(target_modules=r"model\.layers\.\d+\.self_attn\.(q|v)_proj", tt_rank=2)
    names = get_tt_model(tiny_model("llama"), cfg).targeted_module_names
    assert len(names) == 4
    cfg = TTLoRAConfig(target_modules=[r"(?:\w+\.)*+q_proj"], tt_rank=2)  # possessive: no backtrack
    assert len(get_tt_model(tiny_model("llama"), cfg).targeted_module_names) == 2


def test_an_invalid_regex_in_a_target_list_is_reported_as_such():
    with pytest.raises(TargetModulesError, match="not a valid regular expression"):
        TTLoRAConfig(target_modules=["q_proj", "v_proj["])


def test_a_second_get_tt_model_on_a_wrapped_base_is_refused():
    base = tiny_model("llama")
    first = get_tt_model(base, TTLoRAConfig(tt_rank=2))
    with pytest.raises(InvalidInputError, match="add_adapter"):
        get_tt_model(base, TTLoRAConfig(tt_rank=3, target_modules=["k_proj"]))
    assert first.active_adapters == ["default"] and list(first.tt_config) == ["default"]
    assert all(
        list(m.tt_adapters) == ["default"] for m in base.modules() if hasattr(m, "tt_adapters")
    )
    first.unload()
    get_tt_model(base, TTLoRAConfig(tt_rank=3))  # a plain base again: fine


def test_tt_rank_is_clipped_per_bond_with_a_warning():
    net = nn.Sequential(nn.Linear(64, 64))
    cfg = TTLoRAConfig(tt_rank=100, tt_shape=[8, 8, 8, 8], target_modules=["0"])
    with pytest.warns(RankClippedWarning, match="tt_rank"):
        info = inspect_targets(net, cfg)[0]
    assert info.tt_matrices["cores"]["ranks"] == (1, 8, 64, 8, 1)
    with pytest.warns(RankClippedWarning):
        model = get_tt_model(net, cfg)
    assert model.get_nb_trainable_parameters()[0] == info.n_params
    assert [tuple(c.shape) for c in model.base_model[0].tt_adapters["default"].cores] == [
        (1, 1, 8, 8),
        (8, 1, 8, 64),
        (64, 8, 1, 8),
        (8, 8, 1, 1),
    ]


def test_a_huge_tt_rank_is_bounded_by_clipping_before_allocating():
    # 10^9 would ask for ~10^18 parameters; clipped per bond the adapter stays near 2x the layer.
    net = nn.Sequential(nn.Linear(4096, 4096, device="meta"))
    cfg = TTLoRAConfig(tt_rank=10**9, tt_shape=[64, 64, 64, 64], target_modules=["0"])
    with pytest.warns(RankClippedWarning, match="10000000"):
        (info,) = inspect_targets(net, cfg)
    assert info.tt_matrices["cores"]["ranks"] == (1, 64, 4096, 64, 1)
    assert info.n_params <= 2.1 * 4096 * 4096


def test_an_adapter_larger_than_its_dense_update_warns():
    from ttdecomp.errors import TTWarning

    net = nn.Sequential(nn.Linear(64, 64))
    with pytest.warns(TTWarning, match="more than the dense"):
        inspect_targets(net, TTLoRAConfig(tt_rank=100, target_modules=["0"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inspect_targets(net, TTLoRAConfig(tt_rank=4, target_modules=["0"]))
