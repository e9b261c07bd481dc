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
