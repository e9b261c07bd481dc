"""``transformers.Trainer`` that checkpoints only the adapters of a :class:`TTAdapterModel`.

The plain ``Trainer`` trains a :class:`~ttdecomp.adapters.TTAdapterModel` as is, but it only
knows how to *save* ``PreTrainedModel`` and ``PeftModel``; for anything else it writes the full
state dict with safetensors, which fails on models with tied weights (GPT-2, most LMs) and would
store every frozen weight. :class:`TTAdapterTrainer` saves checkpoints with
``model.save_pretrained`` (``ttdecomp_config.json`` + ``ttdecomp_adapter.safetensors`` per
adapter) and resumes from them, including ``load_best_model_at_end``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer

from ..errors import InvalidInputError
from .model import TTAdapterModel
from .serialization import CONFIG_NAME, load_adapter_weights

__all__ = ["TTAdapterTrainer"]


class TTAdapterTrainer(Trainer):
    """A ``transformers.Trainer`` whose checkpoints hold only the TT adapters.

    Use it exactly like ``Trainer`` with a :class:`~ttdecomp.adapters.TTAdapterModel`.

    Examples
    --------
    >>> from ttdecomp.adapters.trainer import TTAdapterTrainer
    >>> issubclass(TTAdapterTrainer, Trainer)
    True
    """

    def __init__(self, model: nn.Module | None = None, *args: Any, **kwargs: Any) -> None:
        """As ``Trainer``; a model that is not a TTAdapterModel is refused before any work.

        (``model=None`` with ``model_init`` is checked when the model is built.)
        """
        if model is not None:
            _check_model(model)
        super().__init__(model, *args, **kwargs)

    def _adapter_model(self, model: nn.Module | None = None) -> TTAdapterModel:
        model = self.accelerator.unwrap_model(model if model is not None else self.model)
        return _check_model(model)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write every adapter with ``save_pretrained`` (and the tokenizer, if any)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        self._adapter_model().save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Restore every adapter's values from a checkpoint written by :meth:`_save`."""
        adapter_model = self._adapter_model(model)
        root = Path(resume_from_checkpoint)
        if not (root / CONFIG_NAME).is_file() and "default" in adapter_model.tt_config:
            raise InvalidInputError(
                f"{root} holds no {CONFIG_NAME}; it is not a checkpoint written by "
                "TTAdapterTrainer."
            )
        for name in adapter_model.tt_config:
            folder = root if name == "default" else root / name
            load_adapter_weights(adapter_model.base_model, folder, name)

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: restore the adapters of the best checkpoint."""
        self._load_from_checkpoint(self.state.best_model_checkpoint)


def _check_model(model: nn.Module) -> TTAdapterModel:
    if not isinstance(model, TTAdapterModel):
        raise InvalidInputError(
            f"TTAdapterTrainer needs a TTAdapterModel (from get_tt_model); got "
            f"{type(model).__name__}. Use transformers.Trainer for other models."
        )
    return model
