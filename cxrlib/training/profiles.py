"""What a profile (:data:`cxrlib.training.config.PROFILES`) decides for a notebook.

The training config profile is the one definition of a profile's data: its phantom
dataset (:func:`phantom_spec`) and so its manifest (:func:`profile_manifest`). Notebooks
and the workbook read the data and the config tree of a profile through these functions
rather than naming cache folders or building override trees themselves.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from cxrlib.data.phantom import PhantomSpec, prepare_phantom
from cxrlib.training.config import DataConfig, Profile, RunConfig, load_config, profile_config


def phantom_spec(data: DataConfig) -> PhantomSpec:
    """The phantom dataset a data node generates when it names no manifest."""
    return PhantomSpec(n=data.phantom_n, seed=data.phantom_seed, size=data.phantom_size)


def profile_phantom(profile: str) -> PhantomSpec:
    """The phantom dataset of ``profile``'s config tree (its data, when it names no
    manifest)."""
    return phantom_spec(profile_config(profile).data)


def profile_record(profile: Profile) -> dict:
    """``profile`` as the workbook's ``run.json`` records it: its settings and phantom."""
    return {**profile.to_dict(), "phantom": asdict(profile_phantom(profile.name))}


def profile_manifest(
    profile: str, cache_dir: str | os.PathLike = "cache", workers: int = 1
) -> Path:
    """The manifest ``profile`` trains on: its ``data.manifest``, else its phantom
    dataset in ``cache_dir`` (generated once, then reused), as ``cxr train`` reads it."""
    data = profile_config(profile).data
    if data.manifest:
        return Path(data.manifest)
    return prepare_phantom(phantom_spec(data), Path(cache_dir), workers=workers)


def profile_run_config(
    profile: str,
    manifest: str | os.PathLike,
    cache_dir: str | os.PathLike,
    epochs: int | None = None,
    seed: int | None = None,
    mode: str | None = None,
) -> RunConfig:
    """``profile``'s config tree on ``manifest`` with its caches in ``cache_dir``; the
    number of ``epochs``, the run ``seed`` and the attention ``mode`` changed where given
    (None: the profile's)."""
    overrides: dict = {"data": {"manifest": str(manifest), "cache_dir": str(cache_dir)}}
    if epochs is not None:
        overrides["train"] = {"epochs": epochs}
    if seed is not None:
        overrides["seed"] = seed
    if mode is not None:
        overrides["model"] = {"mode": mode}
    return load_config(profile, overrides=[overrides])
