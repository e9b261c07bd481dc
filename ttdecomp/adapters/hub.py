"""``push_to_hub`` for TT adapters: the adapter folder only, never the base model.

The adapters are saved with ``save_pretrained`` into a temporary folder, which is uploaded in
one commit with ``huggingface_hub.HfApi.upload_folder`` (after ``create_repo(exist_ok=True)``).
The base model's ``push_to_hub`` is never reached: :class:`~ttdecomp.adapters.TTAdapterModel`
does not forward it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidInputError

__all__ = ["push_adapters"]


def push_adapters(
    model: Any,
    repo_id: str,
    *,
    adapter_names: Sequence[str] | None,
    private: bool | None,
    token: str | None,
    commit_message: str | None,
    revision: str | None,
    create_pr: bool,
    endpoint: str | None,
) -> Any:
    """Save ``model``'s adapters to a temporary folder and upload it to ``repo_id``."""
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise InvalidInputError(
            f"repo_id must be a Hub repository name such as 'user/my-tt-adapter'; got {repo_id!r}."
        )
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(
            "push_to_hub uploads with the `huggingface_hub` package; install it with "
            "`pip install huggingface_hub`."
        ) from None
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise InvalidInputError(
            "push_to_hub cannot upload while HF_HUB_OFFLINE is set; unset it (and make sure the "
            "Hub is reachable), or save locally with save_pretrained(folder)."
        )
    names = list(adapter_names) if adapter_names is not None else None
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="ttdecomp-push-") as folder:
        model.save_pretrained(folder, adapter_names=names)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload TT adapter (ttdecomp)",
            revision=revision,
            create_pr=create_pr,
        )
