"""Builders shared by the test modules."""

from __future__ import annotations

from pathlib import Path

from cxrlib.training.config import load_config, parse_assignment
from cxrlib.training.train import train


def smoke_config(cache: Path):
    """The smoke profile with its caches in ``cache`` and one training epoch."""
    return load_config(
        "smoke", overrides=[parse_assignment(f"data.cache_dir={cache}"), {"train": {"epochs": 1}}]
    )


def trained_smoke_run(tmp_path_factory) -> tuple[Path, object]:
    """A one-epoch smoke training run: ``(run folder, its config)``."""
    config = smoke_config(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("runs") / "smoke"
    train(config, out, progress=False)
    return out, config
