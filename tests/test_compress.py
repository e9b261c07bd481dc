"""ttdecomp.compress: TTLinear, calibration-aware decomposition, compress_model, saving, healing."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ttdecomp as tt  # noqa: E402
from ttdecomp.compress import (  # noqa: E402
    CompressedFileError,
    TTLinear,
    compress_model,
    decompose_whitened,
    heal,
    load_compressed,
    output_error,
    save_compressed,
    select_layers,
)
from ttdecomp.compress.calibration import gram_of, whitening  # noqa: E402
from ttdecomp.compress.layerwise import refit_layers  # noqa: E402
from ttdecomp.errors import InvalidInputError, ShapeError, TTWarning  # noqa: E402


def _mlp(seed: int = 0, dtype=torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16, bias=False)
    ).to(dtype)


def _inputs(n: int = 300, width: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-1.5, 0.5, width)  # anisotropic: calibration matters
    return torch.randn(n, width, generator=g) * scale


# ---------------------------------------------------------------- TTLinear
@pytest.mark.parametrize("bias", [True, False])
def test_ttlinear_matches_its_dense_weight(bias):
    layer = TTLinear(24, 12, (3, 4), (4, 6), (1, 5, 1), bias=bias)
    x = torch.randn(7, 3, 24)
    dense = layer.to_linear()
    assert isinstance(dense, torch.nn.Linear)
    torch.testing.assert_close(layer(x), dense(x), atol=1e-5, rtol=1e-5)
    assert layer.tt_n_params == 3 * 4 * 5 + 5 * 4 * 6
    assert layer.n_params == sum(p.numel() for p in layer.parameters())
    assert layer(x).shape == (7, 3, 12)


def test_from_linear_full_rank_is_exact_and_keeps_bias():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 20)
    layer = TTLinear.from_linear(lin, ranks=10_000)
    x = torch.randn(5, 48)
    torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.bias, lin.bias)
    assert layer.cores[0].dtype == lin.weight.dtype


def test_from_linear_budget_plan_and_eps():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64, bias=False)
    by_budget = TTLinear.from_linear(lin, budget=1000)
    assert by_budget.tt_n_params <= 1000
    p = tt.plan((64, 64), 800, weight=lin.weight.detach().double().numpy(), layout="split")
    by_plan = TTLinear.from_linear(lin, plan=p)
    assert by_plan.ranks == p.ranks and by_plan.row_shape == p.row_shape
    by_eps = TTLinear.from_linear(lin, eps=0.3)
    w = lin.weight.detach().double()
    err = torch.linalg.norm(w - by_eps.to_linear().weight.double()) / torch.linalg.norm(w)
    assert float(err.detach()) <= 0.3 + 1e-5


def test_from_linear_gpt2_conv1d():
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    del transformers
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs, weight stored (16, 24)
    layer = TTLinear.from_linear(conv, ranks=1000)
    x = torch.randn(4, 16)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)
    assert (layer.in_features, layer.out_features) == (16, 24)


def test_extra_repr_names_shapes_and_ranks():
    layer = TTLinear(24, 12, (3, 4), (4, 6), (1, 5, 1))
    text = repr(layer)
    assert "row_shape=(3, 4)" in text and "col_shape=(4, 6)" in text and "ranks=(1, 5, 1)" in text


def test_ttlinear_trains():
    torch.manual_seed(0)
    target = torch.nn.Linear(16, 16)
    layer = TTLinear(16, 16, (4, 4), (4, 4), (1, 8, 1))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(128, 16)
    first = None
    for _ in range(60):
        loss = (layer(x) - target(x).detach()).pow(2).mean()
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(c.grad is not None for c in layer.cores)
    assert float(loss) < 0.5 * first


def test_from_linear_needs_exactly_one_choice():
    lin = torch.nn.Linear(16, 16)
    with pytest.raises(InvalidInputError, match="exactly one"):
        TTLinear.from_linear(lin)
    with pytest.raises(InvalidInputError, match="exactly one"):
        TTLinear.from_linear(lin, ranks=2, budget=100)
    with pytest.raises(InvalidInputError, match=r"nn\.Linear"):
        TTLinear.from_linear(torch.nn.ReLU(), ranks=2)
    with pytest.raises(ShapeError, match="plan"):
        TTLinear.from_linear(lin, plan=tt.plan((32, 16), 200))


# ---------------------------------------------------------------- calibration-aware
def test_whitening_identity_and_output_error_formula():
    x = _inputs(200, 12).double()
    c = x.T @ x
    L = whitening(c, damping=0.0)
    torch.testing.assert_close(L @ L.T, c, rtol=1e-8, atol=1e-8)
    w = torch.randn(5, 12, dtype=torch.float64)
    approx = w + 0.1 * torch.randn(5, 12, dtype=torch.float64)
    direct = torch.linalg.norm(x @ (w - approx).T) / torch.linalg.norm(x @ w.T)
    assert output_error(w, approx, c) == pytest.approx(float(direct), rel=1e-10)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7))
def test_whitened_low_rank_beats_weight_only_on_outputs(seed, rank):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, 8, generator=g, dtype=torch.float64)
    x = torch.randn(60, 8, generator=g, dtype=torch.float64) * torch.logspace(-2, 0, 8).double()
    c = x.T @ x
    res = decompose_whitened(w, c, (1, 10), (8, 1), (1, rank, 1), damping=1e-9)
    plain = tt.tt_svd(w, [1, rank, 1], row_shape=(1, 10), col_shape=(8, 1))
    assert res.exact_unwhitening
    assert res.ttm.ranks == (1, rank, 1)
    # the whitened truncated SVD is the optimal rank-r output approximation (Eckart-Young)
    assert output_error(w, res.ttm.full(), c) <= output_error(w, plain.full(), c) + 1e-9


def test_whitened_general_layout_refines_and_keeps_ranks():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, 16, generator=g, dtype=torch.float64)
    x = torch.randn(400, 16, generator=g, dtype=torch.float64) * torch.logspace(-2, 0, 16).double()
    c = x.T @ x
    ranks = (1, 3, 1)
    res = decompose_whitened(w, c, (4, 4), (4, 4), ranks)
    plain = tt.tt_svd(w, list(ranks), row_shape=(4, 4), col_shape=(4, 4))
    assert not res.exact_unwhitening and res.ttm.ranks == ranks
    assert output_error(w, res.ttm.full(), c) < output_error(w, plain.full(), c)


def test_from_linear_with_calibration_lowers_output_error():
    lin = _mlp()[0]
    x = _inputs()
    plain = TTLinear.from_linear(lin, budget=0.2, layout="split")
    aware = TTLinear.from_linear(lin, budget=0.2, layout="split", calibration=x)
    assert aware.tt_n_params <= 0.2 * 32 * 64
    c = gram_of(x, 32)
    w = lin.weight.detach().double()
    e_aware = output_error(w, aware.to_linear().weight.detach().double(), c)
    e_plain = output_error(w, plain.to_linear().weight.detach().double(), c)
    assert e_aware < e_plain


# ---------------------------------------------------------------- compress_model
def test_compress_model_budget_report_and_outputs():
    net = _mlp()
    x = _inputs()
    small, report = compress_model(net, budget=0.3, calibration=x)
    assert isinstance(net[0], torch.nn.Linear), "the original is not modified"
    assert all(isinstance(small[i], TTLinear) for i in (0, 2))
    dense = 32 * 64 + 64 * 16
    assert report.n_params <= 0.3 * dense and report.dense_n_params == dense
    assert report.n_params == sum(small[i].tt_n_params for i in (0, 2))
    for rec in report.layers:
        assert 0 <= rec.output_error <= 1 and 0 <= rec.weight_error
        assert rec.n_params == math.prod(rec.row_shape) * 0 + rec.n_params
        assert len(rec.ranks) == len(rec.row_shape) + 1
    # the per-layer output error is the one measured on the calibration inputs
    w0 = net[0].weight.detach().double()
    got = small[0].to_linear().weight.detach().double()
    direct = torch.linalg.norm(x.double() @ (w0 - got).T) / torch.linalg.norm(x.double() @ w0.T)
    assert report.layers[0].output_error == pytest.approx(float(direct), rel=1e-4)
    assert "out.err" in str(report)
    with torch.no_grad():
        rel = torch.linalg.norm(small(x) - net(x)) / torch.linalg.norm(net(x))
    assert float(rel) < 1.0


def test_calibration_aware_beats_weight_only_at_the_output():
    net = _mlp()
    x = _inputs()
    errs = {}
    for method in ("weight", "output"):
        small, _ = compress_model(net, budget=0.25, calibration=x, method=method)
        with torch.no_grad():
            errs[method] = float(torch.linalg.norm(small(x) - net(x)) / torch.linalg.norm(net(x)))
    assert errs["output"] < errs["weight"]


def test_compress_model_inplace_and_targets():
    net = _mlp()
    small, report = compress_model(net, budget=0.5, target_modules=["2"], inplace=True)
    assert small is net and isinstance(net[2], TTLinear) and isinstance(net[0], torch.nn.Linear)
    assert [r.name for r in report.layers] == ["2"]


def test_select_layers_skips_heads():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = transformers.GPT2LMHeadModel(cfg)
    names = list(select_layers(model))
    assert "lm_head" not in names and any(n.endswith("c_attn") for n in names)


def test_compress_gpt2_conv1d_model_and_reload(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 50, (4, 10))
    small, report = compress_model(model, budget=0.5, calibration=ids)
    assert {r.module_type for r in report.layers} == {"Conv1D"}
    save_compressed(small, tmp_path, report)
    torch.manual_seed(1)
    fresh = load_compressed(transformers.GPT2LMHeadModel(cfg).eval(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, small(ids).logits)
    # tied embeddings stay tied after loading
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()


def test_save_load_roundtrip_sequential(tmp_path):
    net = _mlp()
    small, report = compress_model(net, budget=0.4)
    save_compressed(small, tmp_path, report)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ttdecomp_compressed.json",
        "ttdecomp_compressed.safetensors",
    ]
    fresh = load_compressed(_mlp(seed=5), tmp_path)
    x = torch.randn(3, 32)
    torch.testing.assert_close(fresh(x), small(x))


def test_heal_lowers_the_distillation_loss():
    net = _mlp()
    x = _inputs(256)
    small, _ = compress_model(net, budget=0.15)
    before = float(torch.linalg.norm(small(x) - net(x)))
    rep = heal(small, net, list(x.split(64)), steps=80, lr=5e-3)
    after = float(torch.linalg.norm(small(x) - net(x)))
    assert rep.steps == 80 and rep.trained_params == sum(small[i].tt_n_params for i in (0, 2))
    assert after < before
    assert all(p.requires_grad for p in small.parameters())  # flags restored


def test_heal_cosine_schedule_decays_the_learning_rate_to_near_zero():
    net, x = _mlp(), _inputs(256)
    flat = compress_model(net, budget=0.15)[0]
    decayed = compress_model(net, budget=0.15)[0]
    rep_flat = heal(flat, net, list(x.split(64)), steps=60, lr=5e-3, warmup=5)
    rep = heal(decayed, net, list(x.split(64)), steps=60, lr=5e-3, warmup=5, schedule="cosine")
    assert rep_flat.lr_last == pytest.approx(5e-3)
    # the last step runs at the rate of progress 59/60: 0.5 (1 + cos(pi 59/60)) of lr
    assert rep.lr_last == pytest.approx(5e-3 * 0.5 * (1 + math.cos(math.pi * 59 / 60)))
    assert rep.loss_last < rep.loss_first
    with pytest.raises(InvalidInputError, match="schedule must be"):
        heal(decayed, net, x, steps=2, schedule="linear")


def _deep(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 16),
    )


def _rel_err(small, net, x) -> float:
    with torch.no_grad():
        return float(torch.linalg.norm(small(x) - net(x)) / torch.linalg.norm(net(x)))


def test_refit_layers_lowers_each_layers_error_on_the_students_inputs():
    net, x, held = _deep(), _inputs(512), _inputs(512, seed=7)
    small, _ = compress_model(net, budget=0.3, calibration=x)
    ranks = [small[i].ranks for i in (0, 2, 4)]
    before = _rel_err(small, net, held)
    rep = refit_layers(small, net, list(x.split(128)))
    assert [r.name for r in rep.layers] == ["0", "2", "4"] and rep.stages == 3
    # the first layer sees the original's inputs: compress_model's fit is already optimal
    # there (up to the bias, which the refit may move); the later ones see the compressed
    # model's own inputs and gain
    assert all(r.error_after <= r.error_before + 1e-12 for r in rep.layers)
    assert all(r.applied and r.error_after < 0.98 * r.error_before for r in rep.layers[1:])
    assert [small[i].ranks for i in (0, 2, 4)] == ranks  # same shapes, same budget
    assert _rel_err(small, net, held) < before  # and on held-out inputs, end to end


def test_refit_layers_error_matches_a_direct_measurement():
    net, x = _deep(), _inputs(256)
    small, _ = compress_model(net, budget=0.3, calibration=x)
    rep = refit_layers(small, net, x)
    with torch.no_grad():  # the last layer's output error, measured on its actual inputs
        xs = small[3](small[2](small[1](small[0](x))))
        xt = net[3](net[2](net[1](net[0](x))))
        got = float(torch.linalg.norm(small[4](xs) - net[4](xt)) / torch.linalg.norm(net[4](xt)))
    assert got == pytest.approx(rep.layers[-1].error_after, rel=1e-3)


def test_heal_layerwise_then_distillation_lowers_the_output_error():
    net, x, held = _deep(), _inputs(512), _inputs(512, seed=7)
    small, _ = compress_model(net, budget=0.3, calibration=x)
    before = _rel_err(small, net, held)
    plain = compress_model(net, budget=0.3, calibration=x)[0]
    heal(plain, net, list(x.split(64)), steps=30, lr=2e-3)
    rep = heal(small, net, list(x.split(64)), steps=30, lr=2e-3, layerwise=True)
    assert rep.refit is not None and len(rep.refit.layers) == 3 and rep.steps == 30
    assert _rel_err(small, net, held) < before
    assert _rel_err(small, net, held) < _rel_err(plain, net, held)  # the refit helps


def test_heal_all_hidden_states_on_a_tiny_bert():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(0, 64, (8, 12), generator=g),
            "attention_mask": torch.ones(8, 12, dtype=torch.long),
        }
        for _ in range(4)
    ]
    small, _ = compress_model(bert, budget=0.3, calibration=batches)

    def err() -> float:
        with torch.no_grad():
            return sum(
                float((small(**b).last_hidden_state - bert(**b).last_hidden_state).pow(2).mean())
                for b in batches
            )

    before = err()
    rep = heal(small, bert, batches, steps=25, lr=3e-3, hidden="all", layerwise=True)
    assert rep.loss_last < rep.loss_first and err() < before
    assert [r.name for r in rep.refit.layers][:3] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
    ]
    assert rep.refit.stages == 8  # q/k/v read one tensor: 4 stages per block
    with pytest.raises(InvalidInputError, match="hidden_states"):
        heal(compress_model(_mlp(), budget=0.3)[0], _mlp(), _inputs(64), hidden="all")


def test_heal_and_refit_bad_input():
    small = compress_model(_mlp(), budget=0.3)[0]
    with pytest.raises(InvalidInputError, match="hidden must be"):
        heal(small, _mlp(), _inputs(64), hidden="middle")
    with pytest.raises(InvalidInputError, match="refit_batches"):
        heal(small, _mlp(), _inputs(64), refit_batches=-1)
    other = torch.nn.Sequential(torch.nn.Linear(32, 16))
    with pytest.raises(InvalidInputError, match="no layer '2'"):
        refit_layers(small, other, _inputs(64))
    with pytest.raises(InvalidInputError, match="no TTLinear"):
        refit_layers(_mlp(), _mlp(), _inputs(64))
    with pytest.raises(InvalidInputError, match="refine_steps"):
        compress_model(_mlp(), budget=0.3, calibration=_inputs(64), refine_steps=-2)


def test_assign_checks_shapes_and_keeps_the_parameters():
    layer = TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1))
    ids = [id(p) for p in layer.parameters()]
    layer.assign(TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1)).to_ttmatrix(), torch.ones(4))
    assert [id(p) for p in layer.parameters()] == ids
    torch.testing.assert_close(layer.bias.detach(), torch.ones(4))
    with pytest.raises(ShapeError, match="assign got cores"):
        layer.assign(TTLinear(8, 4, (2, 2), (2, 4), (1, 3, 1)).to_ttmatrix())


# ---------------------------------------------------------------- bad input
def test_budget_below_one_rank_one_train_per_layer_names_layers():
    with pytest.raises(InvalidInputError, match=r"'?0'? \d+.*at least \d+") as exc:
        compress_model(_mlp(), budget=20)
    assert "2" in str(exc.value) and "minimum" in str(exc.value)


def test_targets_matching_nothing_or_non_linear():
    with pytest.raises(InvalidInputError, match="matches no module"):
        compress_model(_mlp(), budget=0.5, target_modules=["q_proj"])
    with pytest.raises(InvalidInputError, match="GELU"):
        compress_model(_mlp(), budget=0.5, target_modules=["1"])


def test_calibration_of_the_wrong_width_or_with_nan():
    with pytest.raises(ShapeError, match="width 32"):
        compress_model(_mlp(), budget=0.5, calibration=torch.randn(10, 31))
    bad = _inputs(20)
    bad[3, 4] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        compress_model(_mlp(), budget=0.5, calibration=bad)
    with pytest.raises(ShapeError, match="in_features=32"):
        TTLinear.from_linear(_mlp()[0], budget=0.5, calibration=np.ones((5, 7)))
    with pytest.raises(InvalidInputError, match="calibration"):
        compress_model(_mlp(), budget=0.5, method="output")


def test_loading_into_another_architecture_is_refused(tmp_path):
    small, _ = compress_model(_mlp(), budget=0.5)
    save_compressed(small, tmp_path)
    other = torch.nn.Sequential(
        torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16, bias=False)
    )
    with pytest.raises(CompressedFileError, match="another architecture"):
        load_compressed(other, tmp_path)
    assert isinstance(other[0], torch.nn.Linear), "nothing modified"
    with pytest.raises(CompressedFileError, match="Sequential"):
        load_compressed(torch.nn.Linear(32, 64), tmp_path)


def test_half_precision_model_is_decomposed_in_float32_and_says_so():
    net = _mlp(dtype=torch.float16)
    with pytest.warns(TTWarning, match="float32"):
        small, report = compress_model(net, budget=0.5)
    assert small[0].cores[0].dtype == torch.float16
    assert "float16" in report.dtype_note
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTWarning)
        compress_model(_mlp(), budget=0.5)  # no warning in float32


def test_cores_are_balanced_and_the_weight_unchanged():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 48)
    x = _inputs(200, 48) * 30.0  # a large Gram: L⁻¹ shrinks the input core
    layer = TTLinear.from_linear(lin, budget=0.3, layout="split", calibration=x)
    norms = [float(torch.linalg.norm(c)) for c in layer.cores]
    assert max(norms) / min(norms) < 1.0 + 1e-4
    ttm = layer.to_ttmatrix()
    raw = TTLinear.from_ttmatrix(ttm, balance=False)
    torch.testing.assert_close(raw.to_linear().weight, layer.to_linear().weight)


# ---------------------------------------------------------------- budgets as --budget reads them
def test_compress_model_reads_budget_strings_as_the_command_line_does():
    from ttdecomp.cli import build_parser

    net = _mlp()
    args = build_parser().parse_args(["compress", "m", "--budget", "2k", "--output", "o"])
    assert args.budget == 2000
    _, by_text = compress_model(net, "2k")
    _, by_count = compress_model(net, args.budget)
    assert by_text.budget == by_count.budget == 2000
    assert [r.ranks for r in by_text.layers] == [r.ranks for r in by_count.layers]
    _, half = compress_model(net, "50%")
    assert half.n_params <= 0.5 * (32 * 64 + 64 * 16)
    with pytest.raises(InvalidInputError, match="not a finite number"):
        compress_model(net, "lots")


def test_a_budget_at_or_above_the_dense_size_is_refused():
    net = _mlp()
    dense = 32 * 64 + 64 * 16
    with pytest.raises(InvalidInputError, match="not below the dense size"):
        compress_model(net, dense)
    with pytest.raises(InvalidInputError, match=f"{dense:,} parameters"):
        compress_model(net, "1M")


def test_a_calibration_of_fewer_rows_than_inputs_is_warned():
    net = _mlp()
    with pytest.warns(TTWarning, match="fewer input rows") as caught:
        compress_model(net, 0.5, calibration=_inputs(20))
    assert "2 layer(s)" in str(caught[0].message)  # the widest gap is named
    assert "'2': 20 rows for 64 inputs" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TTWarning)
        compress_model(net, 0.5, calibration=_inputs(100))


# ---------------------------------------------------------------- TTLinear arguments
def test_ttlinear_clips_unattainable_ranks_with_a_warning():
    with pytest.warns(tt.errors.RankClippedWarning, match="bond 1: 50 -> 4"):
        layer = TTLinear(8, 4, (2, 2), (2, 4), (1, 50, 1))
    assert layer.ranks == (1, 4, 1)  # min(2 * 2, 2 * 4)
    assert TTLinear(8, 4, (2, 2), (2, 4), 3).ranks == (1, 3, 1)


@pytest.mark.parametrize("bias", ["no", 0, None, 1.0])
def test_ttlinear_bias_must_be_a_bool(bias):
    with pytest.raises(InvalidInputError, match="bias must be True or False"):
        TTLinear(8, 4, (2, 2), (2, 4), (1, 2, 1), bias)


# ---------------------------------------------------------------- tampered files
def _saved(tmp_path):
    small, report = compress_model(_mlp(), budget=0.4)
    save_compressed(small, tmp_path, report)
    return json.loads((tmp_path / "ttdecomp_compressed.json").read_text())


def _write_record(tmp_path, record):
    (tmp_path / "ttdecomp_compressed.json").write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(extra=1), r"unknown keys \['extra'\]"),
        (lambda r: r["layers"]["0"].update(dtype="int64"), "dtype 'int64' is not one of"),
        (lambda r: r["layers"]["0"].update(bias="yes"), "bias is 'yes'"),
        (lambda r: r["layers"]["0"].update(in_features=32.0), "positive ints"),
        (lambda r: r["layers"]["0"].update(ranks=[1, -3, 1]), "ranks"),
        (lambda r: r["layers"]["0"].update(ranks=[1, 10**6, 1]), "attainable"),
        (lambda r: r["layers"]["0"].update(row_shape=[64, 2]), "do not factor"),
        (lambda r: r["layers"]["0"].update(code="os.system"), "expected"),
        (lambda r: r["tensors"].update({"0.bias": ["64"]}), "'tensors'"),
        (lambda r: r["aliases"].update({"x": "nowhere"}), "'aliases'"),
    ],
)
def test_a_tampered_record_is_refused(tmp_path, edit, match):
    record = _saved(tmp_path)
    edit(record)
    _write_record(tmp_path, record)
    with pytest.raises(CompressedFileError, match=match):
        load_compressed(_mlp(seed=5), tmp_path)


@pytest.mark.parametrize(
    ("key", "cast"), [("0.bias", torch.int64), ("0.cores.0", torch.float64), ("2.cores.0", None)]
)
def test_a_tensor_of_another_dtype_is_refused_not_cast(tmp_path, key, cast):
    from safetensors.torch import load_file, save_file

    _saved(tmp_path)
    path = tmp_path / "ttdecomp_compressed.safetensors"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    tensors[key] = tensors[key].to(cast) if cast is not None else tensors[key].half()
    save_file(tensors, path, metadata=meta)
    fresh = _mlp(seed=5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CompressedFileError, match=f"tensor '{key}' is torch"):
        load_compressed(fresh, tmp_path)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_files_saved_by_version_0_1_0_still_load():
    """tests/data/compressed-0.1.0: a Sequential(Linear(8, 16), GELU, Linear(16, 4, bias=False))
    compressed at 50% and saved by ttdecomp 0.1.0, with its output on one input."""
    from pathlib import Path

    folder = Path(__file__).parent / "data" / "compressed-0.1.0"
    expected = json.loads((folder / "expected.json").read_text())
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4, bias=False)
    )
    fresh = load_compressed(net, folder)
    assert isinstance(fresh[0], TTLinear) and isinstance(fresh[2], TTLinear)
    with torch.no_grad():
        y = fresh(torch.tensor(expected["x"]))
    torch.testing.assert_close(y, torch.tensor(expected["y"]))


def test_save_pretrained_of_a_compressed_model_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    small, report = compress_model(model, budget=0.5)
    with pytest.raises(InvalidInputError, match=r"save_compressed.*load_compressed"):
        small.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    model.save_pretrained(tmp_path / "dense")  # the original (not in place) is untouched
    save_compressed(small, tmp_path / "tt", report)
    fresh = load_compressed(transformers.GPT2LMHeadModel(cfg).eval(), tmp_path / "tt")
    with pytest.raises(InvalidInputError, match="save_compressed"):
        fresh.save_pretrained(tmp_path / "hf2")


def test_plan_says_when_it_skips_float8_tensors(tmp_path):
    from safetensors.torch import save_file

    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    save_file(
        {
            "layers.0.q.weight": torch.randn(64, 64),
            "layers.0.k.weight": torch.randn(64, 64).to(torch.float8_e4m3fn),
        },
        tmp_path / "model.safetensors",
    )
    with pytest.warns(TTWarning, match=r"1 in F8_E4M3.*'layers.0.k.weight'"):
        mp = tt.plan_model(tmp_path / "model.safetensors", 0.5)
    assert list(mp.plans) == ["layers.0.q.weight"]


def test_the_plan_command_says_when_it_skips_float8_tensors(tmp_path, capsys):
    from safetensors.torch import save_file

    from ttdecomp.cli import main

    if not hasattr(torch, "float8_e5m2"):
        pytest.skip("this torch has no float8")
    save_file(
        {"a.weight": torch.randn(64, 64), "b.weight": torch.randn(64, 64).to(torch.float8_e5m2)},
        tmp_path / "model.safetensors",
    )
    assert main(["plan", str(tmp_path / "model.safetensors"), "--budget", "50%"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("ttdecomp plan: warning: skipped") and "1 in F8_E5M2" in err


def test_a_record_with_a_key_given_twice_is_refused(tmp_path):
    _saved(tmp_path)
    path = tmp_path / "ttdecomp_compressed.json"
    text = path.read_text()
    path.write_text(text.replace('"aliases": {}', '"aliases": {}, "aliases": {"0.bias": "x"}', 1))
    with pytest.raises(CompressedFileError, match="appears twice"):
        load_compressed(_mlp(seed=5), tmp_path)
