"""Builders shared by the test modules."""

from __future__ import annotations

from pathlib import Path


def smoke_config(cache: Path):
    """The smoke profile with its caches in ``cache`` and one training epoch."""
    from cxrlib.training.config import load_config, parse_assignment

    return load_config(
        "smoke", overrides=[parse_assignment(f"data.cache_dir={cache}"), {"train": {"epochs": 1}}]
    )


def trained_smoke_run(tmp_path_factory) -> tuple[Path, object]:
    """A one-epoch smoke training run: ``(run folder, its config)``."""
    from cxrlib.training.train import train

    config = smoke_config(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("runs") / "smoke"
    train(config, out, progress=False)
    return out, config
