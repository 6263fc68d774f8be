"""``cxr report``: Findings, labels and an attention figure for any radiograph."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Findings, labels and an attention figure for any radiograph",
        description=(
            "Load a training run's best (else last) checkpoint; for each image (files, "
            "folders, globs; PNG / JPEG, DICOM with pydicom) take lung and heart masks from "
            "the run's segmenter (or --masks DIR, or --masks none: a uniform prior), build "
            "the run's layer priors, generate the Findings, label them and draw where each "
            "sentence attended. Writes OUT/reports.jsonl and OUT/<stem>_attention.png. "
            "An unreadable image fails alone (one line); the exit status is 1 if any failed."
        ),
    )
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--run", required=True, type=Path, help="training run or checkpoint folder")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--masks",
        default="segmenter",
        help="segmenter (default), none (uniform prior), or a folder DIR/<structure>/<stem>.png",
    )
    p.add_argument("--segmenter", type=Path, default=None, help="segmenter folder to use")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from cxrlib.experiment.inference import report_images

    summary = report_images(
        args.images,
        args.run,
        args.out,
        masks=args.masks,
        segmenter=args.segmenter,
        device=args.device,
        progress=not args.no_progress,
    )
    for _, reason in summary.failures:
        print(f"cxr: failed: {reason}", file=sys.stderr)
    for r in summary.reports:
        print(f"{Path(r.image).name}: {r.findings}")
    print(
        f"{len(summary.reports)} reported, {len(summary.failures)} failed "
        f"(masks: {summary.reports[0].masks if summary.reports else 'n/a'}) -> {summary.out}"
    )
    return 1 if summary.failures else 0
