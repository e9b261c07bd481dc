"""Shared pytest configuration: hypothesis profiles, offline Hugging Face, backends."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from hypothesis import HealthCheck, settings

# CI and the README's test command run every property with 200 examples
settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(  # a quick local loop: HYPOTHESIS_PROFILE=dev
    "dev",
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

try:  # numpy's and torch's thread pools fight on small machines (see DESIGN.md)
    import torch

    torch.set_num_threads(1)
except ImportError:  # the numpy-only test run
    torch = None

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N`: one core per worker, BLAS included
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """``integration`` tests (real packaged weights) are ``slow`` too: ``pytest -m "not slow"``
    is the development loop (a few minutes on 2 cores), the full suite is CI's."""
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A tiny BERT sequence classifier folder with its tokenizer (no packaged asset), shared by
    the finetune and search tests of one session; treat it as read-only."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ttdecomp.finetune.testing import tiny_classifier_folder

    return tiny_classifier_folder(tmp_path_factory.mktemp("tiny-classifier") / "tiny")


@pytest.fixture(scope="session")
def toy_csv(tmp_path_factory):
    """A toy two-class sentiment CSV of 200 rows (read-only, shared by one session)."""
    from ttdecomp.finetune.testing import toy_sentiment_csv

    return toy_sentiment_csv(tmp_path_factory.mktemp("toy-data") / "toy.csv", n=200)
