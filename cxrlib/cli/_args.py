"""What several subcommands share: argparse value types, the profile names and the
labeler and bootstrap options."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.base.storage import is_url
from cxrlib.training.config import PROFILES


def path_or_url(text: str) -> Path | str:
    """A file argument that may be an fsspec URL (``gs://...``: kept a string, read
    through :mod:`cxrlib.base.storage`), else a path."""
    return text if is_url(text) else Path(text)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def non_negative_int(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, e.g. 0,1,2, got {text!r}"
        ) from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(
            f"expected at least two different seeds >= 0, e.g. 0,1,2, got {text!r}"
        )
    return seeds


# the choices of --profile, read from the config (it loads no torch)
PROFILE_NAMES = sorted(PROFILES)


def add_labeler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labeler", choices=("rule", "chexbert"), default="rule", help="default rule")
    p.add_argument(
        "--chexbert",
        type=Path,
        default=None,
        metavar="PATH",
        help="CheXbert checkpoint chexbert.pth (default $CXR_CHEXBERT)",
    )


def add_bootstrap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=1000,
        metavar="N",
        help="bootstrap resamples, 0: no intervals (default 1000)",
    )
    p.add_argument("--seed", type=integer, default=0, help="bootstrap seed (default 0)")
