"""The search space of ``ttdecomp search``: defaults, files, overrides, the grid, bad input;
the Pareto front; storage URLs. Nothing here trains."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")

from ttdecomp.errors import InvalidInputError
from ttdecomp.search import (
    Param,
    SearchConfig,
    SearchSpace,
    default_space,
    load_space,
    pareto_front,
    tt_shape_candidates,
)
from ttdecomp.search.space import parse_param
from ttdecomp.search.study import redact
from ttdecomp.shapes import from_tt_shape


@pytest.mark.parametrize("shape", [(384, 384), (768, 768), (576, 192), (4096, 1024)])
def test_shape_candidates_fit_the_layer_with_several_core_counts(shape):
    out_f, in_f = shape
    cands = tt_shape_candidates(out_f, in_f)
    assert len(cands) == len({tuple(c) for c in cands})  # no duplicates
    assert len({len(c) for c in cands}) >= 2  # several core counts
    for c in cands:
        rows, cols = from_tt_shape(c, out_f, in_f)  # raises unless the shape fits
        assert math.prod(rows) == out_f and math.prod(cols) == in_f


def test_default_space_has_each_methods_parameters():
    space = default_space(["tt-lora", "lora"], layer=(384, 384)).to_dict()
    assert sorted(space["tt-lora"]) == ["alpha", "lr", "tt_rank", "tt_shape"]
    assert sorted(space["lora"]) == ["lora_alpha", "lr", "r"]
    assert space["tt-lora"]["tt_shape"] == [
        ",".join(map(str, s)) for s in tt_shape_candidates(384, 384)
    ]
    assert space["tt-lora"]["lr"]["log"] is True


def test_grid_is_the_product_per_method_and_settings_map_names():
    space = SearchSpace.from_dict(
        {
            "tt-lora": {"tt_shape": ["8,6,8,8,6,8", "24,16,16,24"], "tt_rank": [2, 4], "lr": 5e-3},
            "lora": {"r": [8], "lora_alpha": [8, 16], "lr": {"low": 1e-4, "high": 1e-2}},
        }
    )
    grid = space.grid(3)
    assert len(grid) == 2 * 2 * 1 + 1 * 2 * 3
    assert len({json.dumps(g, sort_keys=True) for g in grid}) == len(grid)
    lora_lrs = sorted({g["lr"] for g in grid if g["method"] == "lora"})
    assert lora_lrs == [1e-4, 1e-3, 1e-2]  # log-spaced across the range
    s = space.settings({"method": "tt-lora", "tt_shape": "24,16,16,24", "tt_rank": 2, "lr": 5e-3})
    assert (s.rank, s.tt_shape, s.lr, s.alpha) == (2, (24, 16, 16, 24), 5e-3, 16.0)
    s = space.settings({"method": "lora", "r": 8, "lora_alpha": 8.0, "lr": 1e-3})
    assert (s.rank, s.alpha) == (8, 8.0)


@given(
    low=st.floats(1e-6, 0.5),
    ratio=st.floats(1.0, 100.0),
    points=st.integers(1, 7),
    log=st.booleans(),
)
def test_grid_points_stay_in_the_range(low, ratio, points, log):
    high = min(0.9, low * ratio)
    values = Param("lr", low=low, high=high, log=log).grid(points)
    assert 1 <= len(values) <= points
    assert all(low * (1 - 1e-2) <= v <= high * (1 + 1e-2) for v in values)
    assert values == sorted(values)


@given(st.lists(st.tuples(st.floats(0, 1), st.integers(1, 10**6)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_non_dominated_points(points):
    front = set(pareto_front(points))

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    for i, p in enumerate(points):
        dominated = any(dominates(q, p) for q in points)
        if i in front:
            assert not dominated
        elif not dominated:  # an exact duplicate of a front point is left out
            assert any(points[j] == p for j in front)


def test_files_yaml_and_json_give_the_same_space(tmp_path):
    pytest.importorskip("yaml")
    spec = {"tt-lora": {"tt_rank": [2, 4], "lr": {"low": 1e-3, "high": 1e-2}}, "lora": {"r": 8}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    (tmp_path / "s.yaml").write_text(
        "tt-lora:\n  tt_rank: [2, 4]\n  lr: {low: 1.0e-3, high: 1.0e-2}\nlora:\n  r: 8\n"
    )
    a, b = load_space(tmp_path / "s.json"), load_space(tmp_path / "s.yaml")
    assert a.fingerprint() == b.fingerprint()
    assert a.to_dict()["lora"]["r"] == [8]


def test_command_line_overrides_replace_one_parameter():
    config = SearchConfig(
        methods=["tt-lora", "lora"],
        params=["tt-lora.lr=1e-3:1e-2:linear", "lora.r=4,16", "tt-lora.tt_shape=8,6,8,8,6,8"],
    )
    space = config.search_space((384, 384)).to_dict()
    assert space["tt-lora"]["lr"] == {"low": 1e-3, "high": 1e-2, "log": False}
    assert space["tt-lora"]["tt_shape"] == ["8,6,8,8,6,8"]
    assert space["lora"]["r"] == [4, 16]
    assert space["lora"]["lora_alpha"] == default_space(["lora"]).to_dict()["lora"]["lora_alpha"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"dora": {"lr": 1e-3}}, "unknown method 'dora'"),
        ({"lora": {"rank": [4]}}, "unknown parameter 'rank' for lora; expected one of r,"),
        ({"tt-lora": {"r": [4]}}, "unknown parameter 'r' for tt-lora"),
        ({"lora": {"lr": {"low": 1e-2, "high": 1e-4}}}, "low 0.01 > high 0.0001"),
        ({"lora": {"lr": [-1e-3]}}, "learning rate -0.001 is out of range"),
        ({"lora": {"lr": {"low": -1e-3, "high": 1e-2}}}, "learning rate -0.001 is out of range"),
        ({"lora": {"r": [0]}}, "r 0 is out of range"),
        ({"lora": {"r": []}}, "has no values"),
        ({"lora": {"lr": {"low": 1e-3}}}, "must have exactly low, high"),
        ({"tt-lora": {"tt_shape": [[8, 0, 8]]}}, "is not a shape"),
        ({"tt-lora": {"tt_shape": [[2] * 50_000]}}, "has 50000 factors; at most 64"),
        ({"tt-lora": {"alpha": [-2]}}, "alpha -2 must be > 0"),
        ([], "must map methods to their parameters"),
    ],
)
def test_bad_spaces_name_the_problem(spec, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        SearchSpace.from_dict(spec)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr=1e-3", "expected METHOD.NAME=SPEC"),
        ("dora.lr=1e-3", "unknown method 'dora'"),
        ("lora.alpha=8", "unknown parameter 'alpha' for lora"),
        ("lora.lr=1e-2:1e-4", "low 0.01 > high 0.0001"),
        ("lora.lr=-1e-3", "learning rate -0.001 is out of range"),
        ("lora.lr=fast", "'fast' is not a number"),
        ("lora.lr=1:2:3:4", "a range is LOW:HIGH"),
        ("tt-lora.tt_shape=" + ",".join(["2"] * 50_000), "has 50000 factors; at most 64"),
    ],
)
def test_bad_overrides_name_the_flag(text, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_param(text)
    assert "--param" in str(info.value)


def test_bad_files_and_options(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        load_space(tmp_path / "missing.yaml")
    (tmp_path / "s.toml").write_text("x = 1")
    with pytest.raises(InvalidInputError, match=r"unknown file type '\.toml'"):
        load_space(tmp_path / "s.toml")
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_space(tmp_path / "s.json")
    with pytest.raises(
        InvalidInputError, match="sampler must be one of tpe, grid, random; got 'anneal"
    ):
        SearchConfig(sampler="annealing")
    with pytest.raises(InvalidInputError, match="unknown method 'dora'"):
        SearchConfig(methods=["dora"])
    with pytest.raises(InvalidInputError, match="pruner must be one of hyperband, none; got 'me"):
        SearchConfig(pruner="median")
    with pytest.raises(InvalidInputError, match="cannot prune multi-objective"):
        SearchConfig(pareto=True, pruner="hyperband")
    with pytest.raises(InvalidInputError, match="not searched"):
        SearchConfig(methods=["tt-lora"], params=["lora.r=4"])
    with pytest.raises(InvalidInputError, match="n_trials must be an integer >= 1"):
        SearchConfig(n_trials=0)


def test_defaults_of_pruner_follow_the_sampler():
    assert SearchConfig().pruner == "hyperband"
    assert SearchConfig(sampler="grid").pruner == "none"
    assert SearchConfig(pareto=True).pruner == "none"


def test_sampler_and_pruner_settings_reach_optuna():
    pytest.importorskip("optuna")
    from ttdecomp.search.study import make_pruner, make_sampler

    space = default_space(["lora"], (384, 384))
    assert make_sampler("tpe", space, 0, 3, startup_trials=4)._n_startup_trials == 4
    pruner = make_pruner("hyperband", 9, reduction_factor=3)
    # rungs 1, 3, 9 of reduction factor 3: three brackets
    assert (pruner._min_resource, pruner._max_resource, pruner._reduction_factor) == (1, 9, 3)
    assert make_pruner("hyperband", 9, reduction_factor=2)._reduction_factor == 2


def test_budget_and_tpe_options_are_checked():
    with pytest.raises(InvalidInputError, match="epoch_budget must be a finite number > 0"):
        SearchConfig(epoch_budget=-1)
    with pytest.raises(InvalidInputError, match=r"epoch_budget .* got True"):
        SearchConfig(epoch_budget=True)
    with pytest.raises(InvalidInputError, match="random sampler has none"):
        SearchConfig(sampler="random", startup_trials=3)
    with pytest.raises(InvalidInputError, match="reduction_factor must be an integer >= 2"):
        SearchConfig(reduction_factor=1)
    assert SearchConfig(epoch_budget=24, startup_trials=0).epoch_budget == 24


def test_storage_errors_name_the_url_without_its_password():
    pytest.importorskip("optuna")
    from ttdecomp.search.study import open_storage

    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    with pytest.raises(InvalidInputError, match="not a database URL"):
        open_storage("study.db")
    with pytest.raises(InvalidInputError, match="unsupported database 'redis'"):
        open_storage("redis://localhost/0")
    pytest.importorskip("psycopg")
    with pytest.raises(
        InvalidInputError, match=r"cannot reach the study storage postgresql://u:\*\*\*@127"
    ):
        open_storage("postgresql://u:secret@127.0.0.1:1/none")


def test_every_search_name_is_documented():
    from pathlib import Path

    import ttdecomp.search

    api = (Path(__file__).resolve().parents[1] / "docs" / "api.rst").read_text()
    section = api.split(".. currentmodule:: ttdecomp.search", 1)[1]
    listed = {line.strip() for line in section.splitlines() if line.startswith("   ")}
    listed |= {line.split("::")[1].strip() for line in section.splitlines() if "py:data::" in line}
    missing = set(ttdecomp.search.__all__) - listed
    assert not missing, f"add to docs/api.rst: {sorted(missing)}"


# ---------------------------------------------------------------- reliability (issue 27)
def test_duplicate_keys_in_a_space_file_are_refused(tmp_path):
    yaml_file = tmp_path / "space.yaml"
    yaml_file.write_text("lora:\n  r: [4]\n  lr: 1.0e-3\n  r: [8]\n")
    with pytest.raises(InvalidInputError, match=r"line 4: key 'r' is given twice"):
        load_space(yaml_file)
    yaml_file.write_text("lora:\n  r: [4]\nlora:\n  r: [8]\n")
    with pytest.raises(InvalidInputError, match="key 'lora' is given twice"):
        load_space(yaml_file)
    json_file = tmp_path / "space.json"
    json_file.write_text('{"lora": {"r": [4], "r": [8]}}')
    with pytest.raises(InvalidInputError, match="key 'r' is given twice"):
        load_space(json_file)


def test_yaml_exponent_numbers_are_numbers_and_quoted_ones_are_named_strings(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lora:\n  lr: {low: 1e-4, high: 1E-2}\n  lora_alpha: [8, 1.6e1]\n")
    space = load_space(path).to_dict()["lora"]
    assert space["lr"] == {"low": 1e-4, "high": 1e-2, "log": True}
    assert space["lora_alpha"] == [8.0, 16.0]
    path.write_text('lora:\n  lr: "1e-3"\n')
    with pytest.raises(InvalidInputError, match="'1e-3' is a string, not a number"):
        load_space(path)


def test_a_space_that_is_not_a_mapping_is_quoted_in_the_message():
    with pytest.raises(InvalidInputError) as info:
        SearchSpace.from_dict(["lora"])
    assert "{spec!r}" not in str(info.value) and "got ['lora']" in str(info.value)


def test_a_shape_of_the_right_product_in_the_wrong_order_says_so():
    from ttdecomp.errors import ShapeError

    with pytest.raises(ShapeError) as info:
        from_tt_shape([64, 16], 32, 32)  # 1024 = 32 x 32, but no prefix multiplies to 32
    message = str(info.value)
    assert "expected 1024" not in message and "the order is wrong" in message
    with pytest.raises(ShapeError, match="its product is 512, and 32 x 32 = 1024"):
        from_tt_shape([16, 32], 32, 32)


def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path):
    import sqlite3

    from ttdecomp.search.study import open_storage

    app = tmp_path / "app.db"
    with sqlite3.connect(app) as db:
        db.execute("CREATE TABLE users (name TEXT)")
    before = app.read_bytes()
    with pytest.raises(InvalidInputError, match=r"another application's tables \(users\)"):
        open_storage(f"sqlite:///{app}")
    assert app.read_bytes() == before
    with sqlite3.connect(app) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"users"}
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    with pytest.raises(InvalidInputError, match="is not a SQLite database"):
        open_storage(f"sqlite:///{text}")
    assert text.read_text() == "not a database"
    # a new file and an Optuna study are fine, and a study can be opened again
    fresh = f"sqlite:///{tmp_path / 'study.db'}"
    open_storage(fresh)
    open_storage(fresh)


def test_a_bad_sqlite_path_is_not_called_a_server_problem(tmp_path):
    from ttdecomp.search.study import open_storage

    with pytest.raises(InvalidInputError) as info:
        open_storage(f"sqlite:///{tmp_path}/missing-folder/study.db")
    message = str(info.value)
    assert "server" not in message and "missing-folder does not exist" in message
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    with pytest.raises(InvalidInputError, match="is not a file"):
        open_storage(f"sqlite:///{folder}")


def test_a_grid_too_large_to_run_is_refused_before_it_is_built():
    from ttdecomp.search.space import MAX_GRID, default_space

    space = default_space(["tt-lora", "lora"], layer=(384, 384), quick=False)
    assert len(space.grid(3)) <= MAX_GRID
    with pytest.raises(InvalidInputError, match=r"configurations .* at most 100,000"):
        space.grid(10**9)  # would be 10^18 configurations: refused by counting, not by memory


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_deeply_nested_space_files_are_refused_with_the_file_named(tmp_path, suffix):
    from ttdecomp.search.space import load_space

    for depth in (100, 5000):  # above the limit; deep enough to exhaust Python's recursion
        path = tmp_path / f"space{depth}{suffix}"
        body = "[" * depth + "]" * depth
        path.write_text(f"tt-lora: {body}\n" if suffix == ".yaml" else f'{{"tt-lora": {body}}}')
        with pytest.raises(InvalidInputError, match=f"--space {path} nests"):
            load_space(path)
