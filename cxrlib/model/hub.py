"""Model parts from the Hugging Face hub: one way in, and failures in one line.

Every ``from_pretrained`` of a model source (the encoder, GPT-2, its tokenizer and its
config) goes through :func:`load_from_hub`. A local folder loads as it is. For a hub id,
one request (no retries, at most ``HF_HUB_ETAG_TIMEOUT`` seconds, 10 by default) first
asks the hub for the model's ``config.json``; when the hub says yes the part loads as
usual; when it cannot be reached (offline, ``HF_HUB_OFFLINE``), refuses (a gated model
without access) or has no such model, the local cache is tried, and without a cached
copy the load ends within seconds with a :class:`~cxrlib.base.errors.CxrError` naming
the model id and the fixes (``HF_TOKEN``, access on the model's page, a local folder,
or the published sizes with random weights), not after a minute of retries.

The access token is the ``HF_TOKEN`` environment variable only: never code or configs,
never written into a message or a log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from cxrlib.base.errors import CxrError, one_line
from cxrlib.model.config import DINOV3_VITS16_FIELDS, GPT2_SMALL_FIELDS

T = TypeVar("T")

PARTS = {"encoder": DINOV3_VITS16_FIELDS, "decoder": GPT2_SMALL_FIELDS}
"""The model parts a hub id can name (``ModelConfig.<part>``), with the published sizes
as config fields: what the rehearsal without a download sets instead."""

_PROBED: dict[tuple[str, str, bool], Exception | None] = {}
"""The hub's answer per (endpoint, model id, token given): asked once per process
while the loads succeed (a failed load asks again next time: a notebook kernel that
went online meanwhile)."""


def hub_token() -> str | None:
    """The hub access token: the ``HF_TOKEN`` environment variable, never code or configs."""
    return os.environ.get("HF_TOKEN") or None


def load_from_hub(
    part: str,
    source: str | os.PathLike,
    loader: Callable[..., T],
    token: str | None = None,
    **kwargs: Any,
) -> T:
    """``loader(source, token=..., **kwargs)`` for ``ModelConfig.<part>`` = ``source``.

    Parameters
    ----------
    part : {"encoder", "decoder"}
        The model part ``source`` is for (the tokenizer is the decoder's).
    source : str or path-like
        A local folder or a hub id.
    loader : callable
        A ``from_pretrained`` (it takes ``token`` and ``local_files_only``).
    token : str, optional
        Default: :func:`hub_token`.

    Raises
    ------
    CxrError
        No such folder; or the hub id cannot be loaded (hub unreachable and no cached
        copy, gated, not found, a file missing), in one line with the fixes.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)} (got {part!r})")
    source = str(source)
    folder = Path(source).expanduser()
    if folder.is_dir():
        return loader(str(folder), token=token or hub_token(), **kwargs)
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise CxrError(
            f"model.{part} {source!r}: no such folder, and not a Hugging Face hub id"
        ) from None
    token = token or hub_token()
    refused = _probe(source, token)
    try:
        if refused is None:
            return loader(source, token=token, **kwargs)
        return loader(source, token=token, local_files_only=True, **kwargs)
    except OSError as err:
        _PROBED.pop((constants.ENDPOINT, source, token is not None), None)  # ask again
        cause = refused or _hub_cause(err)
        if cause is None:  # the hub answered; the files are not what the loader needs
            raise CxrError(f"{part} {source!r}: {one_line(err)}") from None
        raise CxrError(hub_message(part, source, cause, token is not None)) from None


def _probe(model_id: str, token: str | None) -> Exception | None:
    """None when the hub has ``model_id`` for ``token``, else why not (asked once)."""
    key = (constants.ENDPOINT, model_id, token is not None)
    if key not in _PROBED:
        _PROBED[key] = _ask_hub(model_id, token)
    return _PROBED[key]


def _ask_hub(model_id: str, token: str | None) -> Exception | None:
    if constants.is_offline_mode():
        return OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
    url = hf_hub_url(model_id, "config.json", endpoint=constants.ENDPOINT)
    try:  # one HEAD request: get_hf_file_metadata does not retry (retry_on_errors=False)
        get_hf_file_metadata(url, token=token, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RemoteEntryNotFoundError:
        return None  # the repository is there; the loader says which file is missing
    except Exception as err:  # a network error of any kind, or the hub's refusal
        return err
    return None


def _hub_cause(err: BaseException) -> BaseException | None:
    """The hub's error behind a loader's ``OSError`` (transformers raises ``from`` it)."""
    seen = err.__cause__ or err.__context__
    while seen is not None:
        if isinstance(seen, (HfHubHTTPError, OfflineModeIsEnabled, LocalEntryNotFoundError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def hub_message(part: str, model_id: str, cause: BaseException, has_token: bool) -> str:
    """One line: which model, what went wrong, and every fix (never the token)."""
    page = f"{constants.ENDPOINT.rstrip('/')}/{model_id}"
    reach = ""
    if isinstance(cause, GatedRepoError):
        what = "a gated model, and " + (
            "the HF_TOKEN given has no access to it" if has_token else "HF_TOKEN is not set"
        )
    elif isinstance(cause, RepositoryNotFoundError):
        what = "no local folder, and not on the hub (a wrong id, or a private model " + (
            "the HF_TOKEN given cannot see)" if has_token else "and HF_TOKEN is not set)"
        )
    elif isinstance(cause, RevisionNotFoundError):
        what = "no such revision on the hub"
    elif isinstance(cause, OfflineModeIsEnabled):
        what, reach = "not in the local cache, and HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE, "
    elif isinstance(cause, HfHubHTTPError):
        status = cause.response.status_code if cause.response is not None else "?"
        what = f"the hub answered HTTP {status}, and the model is not in the local cache"
    else:
        what = (
            f"the Hugging Face hub at {constants.ENDPOINT} cannot be reached "
            f"({type(cause).__name__}), and the model is not in the local cache"
        )
        reach = "connect to the hub, "
    key = f"model.{part}"
    return (
        f"{part} {model_id!r}: {what}; fixes: {reach}set HF_TOKEN in the environment (for a "
        f"gated model, after requesting access at {page}), pass a local folder with --set "
        f"{key}=DIR, or rehearse with the published sizes and random weights: "
        f"--set '{key}={random_fields(part)}'"
    )


def random_fields(part: str) -> str:
    """The published sizes of ``part`` as a YAML mapping for ``--set`` (random weights)."""
    fields = ", ".join(f"{name}: {value}" for name, value in PARTS[part].items())
    return "{" + fields + "}"
