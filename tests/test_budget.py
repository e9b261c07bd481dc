"""ttdecomp.parse_budget: budgets as people write them, the same for the CLI and the library."""

from __future__ import annotations

import pytest

import ttdecomp as tt
from ttdecomp.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("50000", 50000),
        ("50_000", 50000),
        ("50,000", 50000),
        ("2k", 2000),
        ("2K", 2000),
        ("1.5M", 1_500_000),
        ("2g", 2_000_000_000),
        ("50%", 0.5),
        ("0.25", 0.25),
        (" 1% ", 0.01),
        ("-5", -5),  # a count, refused as one by the planner
        (300, 300),
        (0.5, 0.5),
    ],
)
def test_parse_budget(text, value):
    got = tt.parse_budget(text)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("bad", ["lots", "", "%", "k", "nan", "inf", "1e999k", float("nan"), True])
def test_parse_budget_refuses_what_is_not_a_finite_budget(bad):
    with pytest.raises(InvalidInputError, match="budget"):
        tt.parse_budget(bad)


def test_the_command_line_reads_budgets_with_it():
    from ttdecomp.cli import parse_budget

    assert parse_budget("2k") == tt.parse_budget("2k") == 2000
