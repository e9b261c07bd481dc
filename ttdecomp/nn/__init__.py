"""The torch floor under the adapters and compression: module kinds (quantized layers here)."""

from __future__ import annotations

__all__: list[str] = []
