"""Moved to :mod:`ttdecomp.assets.registry`; this module keeps imports written before working."""

from __future__ import annotations

from ..assets.registry import (
    DATA,
    MODELS,
    AssetMissingError,
    asset_status,
    data_path,
    model_path,
)

__all__ = [
    "DATA",
    "MODELS",
    "AssetMissingError",
    "asset_status",
    "data_path",
    "model_path",
]
