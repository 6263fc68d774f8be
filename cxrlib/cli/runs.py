"""``cxr train``, ``cxr generate`` and ``cxr export``: a training run, its Findings and
its shareable model."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cxrlib.base.vocabulary import MODES
from cxrlib.cli._args import PROFILE_NAMES, integer, path_or_url, positive_int

# --- cxr train -------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train the report model (Accelerate: CPU, one or several GPUs)",
        description=(
            "Train one run: the profile's config tree, then --config (a partial YAML/JSON "
            "tree), then --set and the flags, merged in that order. Several processes: "
            "`accelerate launch -m cxrlib.cli train ...` or `torchrun --nproc_per_node N "
            "-m cxrlib.cli train ...`."
        ),
    )
    p.add_argument(
        "--profile",
        choices=PROFILE_NAMES,
        metavar="PROFILE",
        default="default",
        help="preset: %(choices)s (default %(default)s)",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML or JSON (partial) tree")
    p.add_argument(
        "--mode", choices=MODES, metavar="MODE", help="anatomical attention mode: %(choices)s"
    )
    p.add_argument("--seed", type=integer, default=None, help="run seed")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last")
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.epochs=3 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from cxrlib.training.checkpoint import CRASH_ENV
    from cxrlib.training.config import load_config, parse_assignment
    from cxrlib.training.train import train

    overrides = [parse_assignment(a) for a in args.assignments]
    if args.mode is not None:
        overrides.append({"model": {"mode": args.mode}})
    if args.seed is not None:
        overrides.append({"seed": args.seed})
    config = load_config(args.profile, args.config, overrides)
    # the kill -9 and write-fault tests' hook (cxrlib.training.checkpoint): read here, at
    # the entry point, and passed in; the library never reads it
    crash_at = os.environ.get(CRASH_ENV) or None
    result = train(
        config,
        args.out,
        resume=args.resume,
        progress=not args.no_progress,
        crash_at=crash_at,
    )
    if result.metrics is None:  # not the main process of a distributed run
        return 0
    best = "n/a" if result.best_metric is None else f"{result.best_metric:.4f}"
    print(
        f"trained {result.global_step} steps, {result.epochs_done} epochs "
        f"({result.stop_reason}); best {config.train.early_stopping_metric} {best}; "
        f"checkpoints in {args.out / 'checkpoints'}"
    )
    return 0


# --- cxr generate ----------------------------------------------------------------------


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate Findings for a manifest split with a trained run",
        description=(
            "Load a training run's best (else last) checkpoint and its config, and write "
            "image_id,generated for every image of the split (the input of cxr evaluate)."
        ),
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (cxr train --out)")
    p.add_argument("--manifest", required=True, type=path_or_url, help="manifest CSV or URL")
    p.add_argument("--split", default="test", help="split to generate for (default test)")
    p.add_argument("--out", required=True, type=Path, help="output CSV")
    p.add_argument("--max-images", type=positive_int, default=None, help="first N images only")
    p.add_argument("--num-beams", type=positive_int, default=None, help="default: the model's")
    p.add_argument("--cache-dir", type=Path, default=None, help="feature/prior cache folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    from cxrlib.training.generate import generate_split

    result = generate_split(
        args.run,
        args.manifest,
        args.split,
        out=args.out,
        cache_dir=args.cache_dir,
        max_images=args.max_images,
        num_beams=args.num_beams,
        progress=not args.no_progress,
    )
    print(
        f"{len(result.frame)} Findings generated with {result.checkpoint} in "
        f"{result.seconds} s -> {args.out}"
        + (f"; {len(result.bad)} unreadable images skipped" if result.bad else "")
    )
    return 0


# --- cxr export ------------------------------------------------------------------------


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="copy a run's best model into a shareable folder with a model card",
        description=(
            "Copy a training run's best (else last) checkpoint's model files (weights, "
            "model config, tokenizer; no optimizer, RNG or trainer state) and the run's "
            "config (run_config.json) into a new folder, with a README.md model card: "
            "architecture, mode, prior schedule, data and split, the test metrics with 95% "
            "intervals from --metrics (else the run's ablation evaluation, else none), "
            "provenance, limitations. The folder loads with ReportModel.from_pretrained and "
            "serves cxr report --run."
        ),
    )
    p.add_argument("run", type=Path, help="training run folder (cxr train --out)")
    p.add_argument("--out", required=True, type=Path, help="new or empty output folder")
    p.add_argument(
        "--metrics",
        type=Path,
        default=None,
        metavar="METRICS_JSON",
        help="cxr evaluate metrics.json of this run on a test split",
    )
    p.add_argument(
        "--segmenter",
        type=Path,
        default=None,
        metavar="DIR",
        help="segmenter to ship in OUT/segmenter (default: the one the run used, if any)",
    )
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args: argparse.Namespace) -> int:
    from cxrlib.experiment.export import export_run
    from cxrlib.training.model_card import test_metrics_path
    from cxrlib.training.runs import run_folder

    metrics = test_metrics_path(run_folder(args.run), args.metrics) if args.run.is_dir() else None
    out = export_run(args.run, args.out, metrics=metrics, segmenter=args.segmenter)
    said = f"test metrics from {metrics}" if metrics else "no test metrics (not measured yet)"
    shipped = "with" if (out / "segmenter").is_dir() else "without"
    print(f"exported {args.run} -> {out} (README.md model card with {said}; {shipped} a segmenter)")
    return 0
