"""Helpers shared by the adapter test modules (torch needed; import after the torch skip)."""

from __future__ import annotations

from ttdecomp.adapters import TTAdapterModel


def alone(model: TTAdapterModel, name: str, **inputs):
    """The output of the model with only adapter ``name`` (or none for ``__base__``)."""
    if name == "__base__":
        with model.disable_adapter():
            return model(**inputs)
    model.set_adapter(name)
    return model(**inputs)
