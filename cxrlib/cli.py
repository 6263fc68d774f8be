"""The ``cxr`` command: thin wrappers over the library, argument parsing and errors.

Every subcommand is a function ``_cmd_<name>(args) -> int`` beside the function that
declares its arguments. User errors (:class:`cxrlib.base.errors.CxrError`, missing files,
bad values) end with one line ``cxr: error: ...`` and exit 1; ``--debug`` shows the
traceback instead. Argument errors exit 2 (argparse's convention).

A subcommand imports the library code it runs inside its ``_cmd_`` function (deferred on
purpose: ``cxr --help`` and a mistyped option answer without loading torch and the whole
package); this is the one module that does so. The choices of its flags come from
:mod:`cxrlib.base.vocabulary` and the config profiles, which load no torch.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrlib import __version__
from cxrlib.base.errors import CxrError
from cxrlib.base.vocabulary import (
    MASK_SOURCES,
    MODES,
    PRIOR_PADDINGS,
    PRIOR_SCHEDULES,
    PRIOR_STRUCTURES,
)
from cxrlib.training.config import PROFILES


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


# --- cxr phantom -----------------------------------------------------------------------


def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic chest radiograph dataset with known ground truth",
        description=(
            "Write N synthetic frontal chest radiographs with lung/heart masks, CheXpert "
            "labels, attributes and Findings text, plus DIR/manifest.csv. Same arguments "
            "give byte-identical output."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--n", required=True, type=_positive_int, help="number of images")
    p.add_argument("--seed", type=_int, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=_positive_int, default=256, help="image side in px (default 256)")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes (default 1)")
    p.set_defaults(handler=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from cxrlib.data.phantom import write_phantom

    summary = write_phantom(
        args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers
    )
    print(summary.describe())
    return 0


# the choices of the flags below, read from the configs (no torch is loaded by them)
_profiles = sorted(PROFILES)


# --- cxr workbook ----------------------------------------------------------------------


def _add_workbook(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workbook", help="run the notebooks of the workbook")
    wsub = p.add_subparsers(dest="workbook_command", metavar="COMMAND", required=True)
    r = wsub.add_parser(
        "run",
        help="execute the notebooks in order with papermill",
        description=(
            "Execute the numbered notebooks in order with papermill, each with the "
            "profile's parameters; executed copies go into the run folder."
        ),
    )
    r.add_argument(
        "--profile",
        choices=_profiles,
        metavar="PROFILE",
        default="default",
        help="settings preset: %(choices)s (default %(default)s)",
    )
    r.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/<profile>-<timestamp>/)"
    )
    r.add_argument(
        "--notebooks",
        type=Path,
        default=None,
        help="folder of the numbered notebooks (default: the repository's notebooks/)",
    )
    r.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="run on this manifest instead of the profile's phantom dataset",
    )
    r.add_argument(
        "--wingspan",
        type=Path,
        default=None,
        help="Wingspan folder for the segmenter (default ../shared/data/wingspan if present)",
    )
    r.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S,S,...",
        help="the ablation's seeds instead of the profile's, e.g. 100,101,102,103,104",
    )
    r.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help=(
            "continue the killed or failed run in folder RUN from its first unfinished "
            "notebook, with the settings it was started with (the other options are ignored)"
        ),
    )
    r.set_defaults(handler=_cmd_workbook_run)
    _add_workbook_readme(wsub)


def _add_workbook_readme(wsub: argparse._SubParsersAction) -> None:
    description = (
        "Replace the README text between <!-- results:start --> and "
        "<!-- results:end --> with the results of the run folder RUN (tables, "
        "intervals, tests, timings), generated from its files; the rest of the README "
        "is left as it is. --check only compares and exits 1 when they differ."
    )
    readme = wsub.add_parser(
        "readme",
        help="regenerate the README's results section from a run folder",
        description=description,
    )
    # the old name, kept for one release and not listed in the help
    old = wsub.add_parser("report", description=f"{description} (old name of cxr workbook readme)")
    for rep in (readme, old):
        rep.add_argument("run", type=Path, metavar="RUN", help="a workbook run folder")
        rep.add_argument(
            "--readme", type=Path, default=Path("README.md"), help="the README (default README.md)"
        )
        rep.add_argument(
            "--check", action="store_true", help="fail if the section differs; write nothing"
        )
        rep.add_argument(
            "--replicate",
            type=Path,
            default=None,
            metavar="RUN2",
            help="a run of the same profile on a disjoint seed set (--seeds): both runs' verdicts",
        )
        rep.set_defaults(handler=_cmd_workbook_readme)


def _seed_list(text: str) -> list[int]:
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


def _cmd_workbook_readme(args: argparse.Namespace) -> int:
    from cxrlib.experiment.results import update_readme

    changed = update_readme(args.run, args.readme, check=args.check, replicate=args.replicate)
    if args.check:
        print(f"{args.readme}: the results section matches {args.run}")
    elif changed:
        print(f"{args.readme}: results section regenerated from {args.run}")
    else:
        print(f"{args.readme}: results section already up to date with {args.run}")
    return 0


def _cmd_workbook_run(args: argparse.Namespace) -> int:
    from cxrlib.experiment.workbook import resume_workbook, run_workbook

    if args.resume is not None:
        result = resume_workbook(args.resume)
        print(f"workbook run complete: {result.run_dir}")
        return 0
    result = run_workbook(
        args.profile,
        out=args.out,
        notebooks=args.notebooks,
        manifest=args.manifest,
        wingspan=args.wingspan,
        seeds=args.seeds,
    )
    print(f"workbook run complete: {result.run_dir}")
    return 0


# --- cxr priors ------------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_priors(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "priors",
        help="per-layer anatomical priors for every image of a manifest (cached)",
        description=(
            "Unite the selected structures' masks, area-downsample them to the encoder's "
            "patch grid (IMAGE_SIZE / PATCH_SIZE per side) and smooth them once per decoder "
            "layer, broad to focused. Masks come from the manifest, else the segmenter, "
            "else none (uniform prior). Writes DIR/priors-<key>.safetensors: priors "
            "(N, LAYERS, grid*grid) float32 in [0, 1], grid masks and image ids; images "
            "already there under the same settings and unchanged masks are reused."
        ),
    )
    p.add_argument("--manifest", required=True, type=Path, help="manifest CSV")
    p.add_argument("--out", required=True, type=Path, help="cache folder (created)")
    p.add_argument("--schedule", choices=PRIOR_SCHEDULES, help="default linear")
    p.add_argument(
        "--structures",
        help=f"comma-separated, from {', '.join(PRIOR_STRUCTURES)} (default lungs,heart)",
    )
    p.add_argument("--image-size", type=_positive_int, help="encoder input px (default 224)")
    p.add_argument("--patch-size", type=_positive_int, help="patch px (default 16)")
    p.add_argument("--layers", type=_positive_int, help="decoder layers (default 12)")
    p.add_argument(
        "--sigma-start",
        type=_positive_float,
        help="linear: layer 0, a fraction of the image side (default 13/96)",
    )
    p.add_argument(
        "--sigma-end",
        type=_positive_float,
        help="linear: last layer, a fraction of the image side (default 1/48)",
    )
    p.add_argument(
        "--sigma",
        type=_positive_float,
        help="constant: every layer, a fraction of the image side (default 1/16)",
    )
    p.add_argument("--padding", choices=PRIOR_PADDINGS, help="blur border (default reflect)")
    p.add_argument("--source", choices=MASK_SOURCES, default="auto", help="default auto")
    p.add_argument("--segmenter", type=Path, default=None, help="segmenter checkpoint folder")
    p.add_argument(
        "--dtype", choices=("float32", "float16"), default="float32", help="stored priors"
    )
    p.set_defaults(handler=_cmd_priors)


def _cmd_priors(args: argparse.Namespace) -> int:
    from cxrlib.anatomy.cache import cached_priors_for_manifest, checkpoint_fingerprint
    from cxrlib.anatomy.priors import PriorConfig
    from cxrlib.data.manifest import read_manifest

    if not args.manifest.is_file():
        raise CxrError(f"--manifest {args.manifest} does not exist")
    given = {
        "structures": args.structures,
        "schedule": args.schedule,
        "num_layers": args.layers,
        "image_size": args.image_size,
        "patch_size": args.patch_size,
        "sigma_start": args.sigma_start,
        "sigma_end": args.sigma_end,
        "sigma": args.sigma,
        "padding": args.padding,
    }
    config = PriorConfig(**{k: v for k, v in given.items() if v is not None})
    try:
        df = read_manifest(args.manifest)
    except CxrError as err:
        problems = getattr(err, "problems", None) or [str(err)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CxrError(f"invalid --manifest: {problems[0]}{more}") from None
    segmenter = segmenter_id = None
    if args.segmenter is not None:
        from cxrlib.anatomy.segmenter import Segmenter

        segmenter_id = checkpoint_fingerprint(args.segmenter)
        segmenter = Segmenter.from_pretrained(args.segmenter)
    result = cached_priors_for_manifest(
        df,
        config,
        args.out,
        source=args.source,
        segmenter=segmenter,
        segmenter_id=segmenter_id,
        dtype=args.dtype,
    )
    print(
        f"schedule {config.schedule}, structures {','.join(config.structures)}, "
        f"grid {config.grid}x{config.grid}, {config.num_layers} layers"
    )
    print(result.describe())
    return 0


# --- cxr bench -------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed claims (table + JSON, ratios against a same-run baseline)",
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    ph = bsub.add_parser("phantom", help="phantom generation images/s on one and two processes")
    ph.add_argument("--n", type=_positive_int, default=200, help="images per measurement")
    ph.add_argument("--size", type=_positive_int, default=256, help="image side in px")
    ph.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    ph.set_defaults(handler=_cmd_bench_phantom)
    pr = bsub.add_parser("priors", help="layer-prior masks/s: vectorised vs a naive loop")
    pr.add_argument("--n", type=_positive_int, default=4096, help="masks (vectorised run)")
    pr.add_argument("--grid", type=_positive_int, default=32, help="patch grid side")
    pr.add_argument("--layers", type=_positive_int, default=12, help="decoder layers")
    pr.add_argument(
        "--schedule", choices=("thesis", "linear", "constant"), default="thesis", help="schedule"
    )
    pr.add_argument("--threads", type=_int, default=0, help="torch threads (0: torch's default)")
    pr.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    pr.set_defaults(handler=_cmd_bench_priors)
    mo = bsub.add_parser(
        "model",
        help="anatomical attention cost: train step and decode ms/token, soft/strict vs none",
    )
    mo.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default cpu")
    mo.add_argument(
        "--preset",
        choices=("tiny", "published"),
        default="tiny",
        help="model sizes (published: DINOv3 ViT-S/16 + GPT-2 small from configs, no download)",
    )
    mo.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="bfloat16: autocast"
    )
    mo.add_argument("--batch", type=_positive_int, default=None, help="images (preset default)")
    mo.add_argument(
        "--text-tokens", type=_positive_int, default=None, help="text tokens (preset default)"
    )
    mo.add_argument(
        "--new-tokens", type=_positive_int, default=None, help="tokens decoded (preset default)"
    )
    mo.add_argument("--repeats", type=_positive_int, default=None, help="timed repeats")
    mo.add_argument("--threads", type=_int, default=0, help="torch threads (0: torch's default)")
    mo.add_argument(
        "--bias-kernel",
        choices=("auto", "mask", "fold", "cudnn"),
        default="auto",
        help="how soft/strict add the bias in causal training passes (auto: the device's)",
    )
    mo.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    mo.set_defaults(handler=_cmd_bench_model)
    fe = bsub.add_parser(
        "features",
        help="training epoch with the encoder feature cache vs recomputing the encoder (tiny)",
    )
    fe.add_argument("--n", type=_positive_int, default=128, help="phantom images (one epoch)")
    fe.add_argument("--batch", type=_positive_int, default=16, help="images per training step")
    fe.add_argument(
        "--size", type=_positive_int, default=224, help="phantom side in px (resized to 224)"
    )
    fe.add_argument("--repeats", type=_positive_int, default=3, help="epochs each way (best)")
    fe.add_argument("--threads", type=_int, default=0, help="torch threads (0: torch's default)")
    fe.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    fe.set_defaults(handler=_cmd_bench_features)
    la = bsub.add_parser(
        "labeler", help="report labeler reports/s on one core vs the 1,000/s target"
    )
    la.add_argument("--n", type=_positive_int, default=2000, help="synthetic reports")
    la.add_argument("--repeats", type=_positive_int, default=3, help="timed repeats (best)")
    la.add_argument(
        "--iu",
        type=Path,
        default=None,
        help="IU X-ray NLMCXR_reports.tgz (default ../shared/data/iu-xray/... if present)",
    )
    la.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    la.set_defaults(handler=_cmd_bench_labeler)


def _cmd_bench_phantom(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run("phantom", out=args.json, n=args.n, size=args.size)
    return 0


def _cmd_bench_model(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run(
        "model",
        out=args.json,
        device=args.device,
        preset=args.preset,
        dtype=args.dtype,
        batch=args.batch or 0,
        text_tokens=args.text_tokens or 0,
        new_tokens=args.new_tokens or 0,
        repeats=args.repeats or 0,
        threads=args.threads,
        bias_kernel=args.bias_kernel,
    )
    return 0


def _cmd_bench_priors(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run(
        "priors",
        out=args.json,
        n=args.n,
        grid=args.grid,
        layers=args.layers,
        schedule=args.schedule,
        threads=args.threads,
    )
    return 0


def _cmd_bench_features(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run(
        "features",
        out=args.json,
        n=args.n,
        batch=args.batch,
        size=args.size,
        repeats=args.repeats,
        threads=args.threads,
    )
    return 0


def _cmd_bench_labeler(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run("labeler", out=args.json, n=args.n, repeats=args.repeats, iu=args.iu)
    return 0


# --- cxr manifest ----------------------------------------------------------------------


def _unit_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _add_manifest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "manifest",
        help="turn a dataset's own layout into a manifest",
        description=(
            "Write a manifest (one CSV row per image, the schema every notebook reads) from "
            "a dataset's official layout, plus <manifest>.summary.json with the rows kept "
            "and dropped per reason. data_manifests/datasets.md documents each adapter."
        ),
    )
    msub = p.add_subparsers(dest="manifest_command", metavar="DATASET", required=True)
    private = (
        "manifest path (default: $XDG_CACHE_HOME or ~/.cache, then "
        "cxrlib/manifests/%s/manifest.csv); refused inside a git work tree"
    )
    allow = "allow writing the manifest inside a git work tree (it must never be committed)"

    _add_manifest_mimic(msub, private, allow)
    _add_manifest_chexpert_plus(msub, private, allow)
    _add_manifest_iu_xray(msub, private, allow)
    _add_manifest_wingspan(msub)
    _add_manifest_folder(msub)


def _add_manifest_mimic(msub: argparse._SubParsersAction, private: str, allow: str) -> None:
    """``cxr manifest`` for MIMIC-CXR-JPG."""
    m = msub.add_parser(
        "mimic-cxr",
        help="MIMIC-CXR-JPG 2.0.0 + report texts (credentialed)",
        description=(
            "MIMIC-CXR-JPG 2.0.0 (metadata, split, chexpert CSVs and files/) with the "
            "MIMIC-CXR report texts; Findings extracted by the MIMIC-CXR section conventions."
        ),
    )
    m.add_argument("--root", required=True, type=Path, help="MIMIC-CXR-JPG folder")
    m.add_argument("--out", type=Path, default=None, help=private % "mimic-cxr")
    m.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="folder with files/pXX/pSUBJECT/sSTUDY.txt or mimic-cxr-reports.zip (default ROOT)",
    )
    m.add_argument("--views", default="PA,AP", help="ViewPositions to keep (default PA,AP)")
    m.add_argument(
        "--keep-missing-findings",
        action="store_true",
        help="keep studies without a FINDINGS section (findings empty)",
    )
    m.add_argument("--allow-in-repo", action="store_true", help=allow)
    m.set_defaults(handler=_cmd_manifest_mimic)


def _add_manifest_chexpert_plus(msub: argparse._SubParsersAction, private: str, allow: str) -> None:
    """``cxr manifest`` for CheXpert Plus."""
    c = msub.add_parser(
        "chexpert-plus",
        help="CheXpert Plus (credentialed), validation split carved by patient",
        description=(
            "CheXpert Plus: df_chexpert_plus_240401.csv, PNG images, CheXbert labels of "
            "the Findings when present. Official valid -> test; official train split into "
            "train/validate by patient (seeded)."
        ),
    )
    c.add_argument("--root", required=True, type=Path, help="folder of df_chexpert_plus_240401.csv")
    c.add_argument("--out", type=Path, default=None, help=private % "chexpert-plus")
    c.add_argument(
        "--images", type=Path, default=None, help="image folder (default ROOT, ROOT/PNG...)"
    )
    c.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="CheXbert labels JSON lines (default ROOT/chexbert_labels/findings_fixed.json)",
    )
    c.add_argument("--views", default="PA,AP", help="views to keep (default PA,AP)")
    c.add_argument(
        "--val-fraction",
        type=_unit_fraction,
        default=0.1,
        help="fraction of official-train patients put in validate (default 0.1)",
    )
    c.add_argument("--seed", type=_int, default=0, help="split seed (default 0)")
    c.add_argument(
        "--keep-missing-findings", action="store_true", help="keep images without Findings"
    )
    c.add_argument("--allow-in-repo", action="store_true", help=allow)
    c.set_defaults(handler=_cmd_manifest_chexpert_plus)


def _add_manifest_iu_xray(msub: argparse._SubParsersAction, private: str, allow: str) -> None:
    """``cxr manifest`` for IU X-ray (Open-i)."""
    iu = msub.add_parser(
        "iu-xray",
        help="IU X-ray (Open-i) reports, text-only or with images",
        description=(
            "IU X-ray: the Open-i XML reports (NLMCXR_reports.tgz). Without --images a "
            "text-only manifest, one row per report; with --images one row per frontal "
            "image (views from the DICOM metadata CSV)."
        ),
    )
    iu.add_argument("--reports", required=True, type=Path, help="NLMCXR_reports.tgz or XML folder")
    iu.add_argument("--out", type=Path, default=None, help=private % "iu-xray")
    iu.add_argument("--images", type=Path, default=None, help="folder of the report images")
    iu.add_argument(
        "--metadata",
        type=Path,
        default=None,
        help="nlmcxr_dicom_metadata.csv.gz (default: beside --reports)",
    )
    iu.add_argument("--views", default="PA,AP", help="views to keep with --images (default PA,AP)")
    iu.add_argument("--seed", type=_int, default=0, help="split seed (default 0)")
    iu.add_argument(
        "--drop-empty-findings",
        action="store_true",
        help="drop reports with empty FINDINGS (default: keep them, counted)",
    )
    iu.add_argument("--allow-in-repo", action="store_true", help=allow)
    iu.set_defaults(handler=_cmd_manifest_iu_xray)


def _add_manifest_wingspan(msub: argparse._SubParsersAction) -> None:
    """``cxr manifest`` for Wingspan."""
    w = msub.add_parser(
        "wingspan",
        help="Wingspan radiographs with lung/heart masks and CTR",
        description="Wingspan: png/, mask/{left_lung,right_lung,heart}/, ctr.csv.",
    )
    w.add_argument("--root", required=True, type=Path, help="wingspan folder")
    w.add_argument("--out", required=True, type=Path, help="manifest path")
    w.add_argument("--seed", type=_int, default=0, help="split seed (default 0)")
    w.set_defaults(handler=_cmd_manifest_wingspan)


def _add_manifest_folder(msub: argparse._SubParsersAction) -> None:
    """``cxr manifest`` for any image folder."""
    f = msub.add_parser(
        "folder",
        help="any folder of images, optional masks and reports CSV",
        description=(
            "Any folder of .png/.jpg images; masks from MASKS/{lungs,left_lung,right_lung,"
            "heart}/; reports from a CSV with image_id and findings columns."
        ),
    )
    f.add_argument("--images", required=True, type=Path, help="image folder")
    f.add_argument("--out", required=True, type=Path, help="manifest path")
    f.add_argument("--masks", type=Path, default=None, help="mask folder")
    f.add_argument("--reports", type=Path, default=None, help="CSV: image_id, findings, ...")
    f.add_argument("--seed", type=_int, default=0, help="split seed (default 0)")
    f.add_argument("--view", default="", help="view of every image (default empty: unknown)")
    f.set_defaults(handler=_cmd_manifest_folder)


def _cmd_manifest_mimic(args: argparse.Namespace) -> int:
    from cxrlib.data.mimic import build_manifest

    summary = build_manifest(
        args.root,
        args.out,
        reports=args.reports,
        views=args.views,
        keep_missing_findings=args.keep_missing_findings,
        allow_in_repo=args.allow_in_repo,
    )
    print(summary.describe())
    return 0


def _cmd_manifest_chexpert_plus(args: argparse.Namespace) -> int:
    from cxrlib.data.chexpert_plus import build_manifest

    summary = build_manifest(
        args.root,
        args.out,
        images=args.images,
        labels=args.labels,
        views=args.views,
        val_fraction=args.val_fraction,
        seed=args.seed,
        keep_missing_findings=args.keep_missing_findings,
        allow_in_repo=args.allow_in_repo,
    )
    print(summary.describe())
    return 0


def _cmd_manifest_iu_xray(args: argparse.Namespace) -> int:
    from cxrlib.data.iu_xray import build_manifest

    summary = build_manifest(
        args.reports,
        args.out,
        images=args.images,
        metadata=args.metadata,
        views=args.views,
        seed=args.seed,
        drop_empty_findings=args.drop_empty_findings,
        allow_in_repo=args.allow_in_repo,
    )
    print(summary.describe())
    return 0


def _cmd_manifest_wingspan(args: argparse.Namespace) -> int:
    from cxrlib.data.wingspan import build_manifest

    print(build_manifest(args.root, args.out, seed=args.seed).describe())
    return 0


def _cmd_manifest_folder(args: argparse.Namespace) -> int:
    from cxrlib.data.folder import build_manifest

    summary = build_manifest(
        args.images,
        args.out,
        masks=args.masks,
        reports=args.reports,
        seed=args.seed,
        view=args.view,
    )
    print(summary.describe())
    return 0


# --- cxr masks -------------------------------------------------------------------------


def _add_masks(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("masks", help="attach organ masks to a manifest")
    ksub = p.add_subparsers(dest="masks_command", metavar="SOURCE", required=True)
    c = ksub.add_parser(
        "chexmask",
        help="decode CheXmask RLE lung/heart masks for a MIMIC-CXR or CheXpert manifest",
        description=(
            "Decode the CheXmask database's run-length encoded lung and heart masks for the "
            "images of a manifest into OUT/masks/ and write OUT/manifest.csv with the mask "
            "columns filled (images below the quality threshold get none)."
        ),
    )
    c.add_argument("--csv", required=True, type=Path, help="CheXmask CSV (original resolution)")
    c.add_argument("--manifest", required=True, type=Path, help="MIMIC-CXR or CheXpert manifest")
    c.add_argument("--out", required=True, type=Path, help="output folder (masks/, manifest.csv)")
    c.add_argument(
        "--min-dice",
        type=float,
        default=0.7,
        help="minimum 'Dice RCA (Mean)' quality score (default 0.7)",
    )
    c.add_argument(
        "--drop-unmasked", action="store_true", help="drop manifest rows left without masks"
    )
    c.add_argument(
        "--allow-in-repo", action="store_true", help="allow writing inside a git work tree"
    )
    c.set_defaults(handler=_cmd_masks_chexmask)


def _cmd_masks_chexmask(args: argparse.Namespace) -> int:
    from cxrlib.data.chexmask import attach_masks

    summary = attach_masks(
        args.csv,
        args.manifest,
        args.out,
        min_dice=args.min_dice,
        drop_unmasked=args.drop_unmasked,
        allow_in_repo=args.allow_in_repo,
    )
    print(summary.describe())
    return 0


# --- cxr segment -----------------------------------------------------------------------


def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="train, run and evaluate the lung/heart segmenter",
        description=(
            "A small U-Net predicting the left lung, right lung and heart (patient's sides). "
            "Default: train on the Wingspan radiographs' train split and report on the "
            "held-out validate+test images."
        ),
    )
    ssub = p.add_subparsers(dest="segment_command", metavar="COMMAND", required=True)

    def data_source(q: argparse.ArgumentParser) -> None:
        g = q.add_mutually_exclusive_group(required=True)
        g.add_argument("--wingspan", type=Path, help="the Wingspan folder (png/, mask/, ctr.csv)")
        g.add_argument(
            "--manifest", type=Path, help="a manifest with left/right lung and heart masks"
        )

    t = ssub.add_parser("train", help="train on a manifest's train split")
    data_source(t)
    t.add_argument("--out", type=Path, required=True, help="checkpoint folder (created)")
    t.add_argument("--epochs", type=_positive_int, default=None, help="default 40")
    t.add_argument("--image-size", type=_positive_int, default=None, help="default 256")
    t.add_argument("--seed", type=_int, default=None, help="default 0")
    t.add_argument("--threads", type=_int, default=None, help="torch threads (default: torch's)")
    t.set_defaults(handler=_cmd_segment_train)

    pr = ssub.add_parser("predict", help="write masks for a folder of PNG/JPEG radiographs")
    pr.add_argument("--checkpoint", type=Path, required=True, help="folder from `segment train`")
    pr.add_argument("--images", type=Path, required=True, help="folder of radiographs")
    pr.add_argument("--out", type=Path, required=True, help="writes <out>/<organ>/<name>.png")
    pr.set_defaults(handler=_cmd_segment_predict)

    e = ssub.add_parser("eval", help="Dice, HD95 and CTR error on held-out images")
    data_source(e)
    e.add_argument("--checkpoint", type=Path, required=True, help="folder from `segment train`")
    e.add_argument(
        "--splits", default="validate,test", help="splits to evaluate (default validate,test)"
    )
    e.add_argument("--json", type=Path, default=None, help="also write the summary JSON here")
    e.add_argument("--per-image", type=Path, default=None, help="also write per-image CSV here")
    e.set_defaults(handler=_cmd_segment_eval)


def _cmd_segment_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from cxrlib.anatomy.segmenter import (
        SegmenterConfig,
        segmenter_data,
        split_held_out,
        train_segmenter,
    )

    overrides = {
        k: v
        for k, v in {
            "epochs": args.epochs,
            "image_size": args.image_size,
            "seed": args.seed,
            "threads": args.threads,
        }.items()
        if v is not None
    }
    cfg = replace(SegmenterConfig(), **overrides)
    df = segmenter_data(wingspan=args.wingspan, manifest=args.manifest, work=args.out / "data")
    train, held_out = split_held_out(df)
    if len(train) == 0:
        raise CxrError("the manifest has no train split rows to train on")
    train_segmenter(train, args.out, cfg, held_out=held_out if len(held_out) else None)
    print(f"segmenter trained on {len(train)} images -> {args.out}")
    return 0


def _cmd_segment_predict(args: argparse.Namespace) -> int:
    from cxrlib.anatomy.segmenter import Segmenter, predict_folder

    n = predict_folder(Segmenter.from_pretrained(args.checkpoint), args.images, args.out)
    print(f"wrote masks of {n} images to {args.out}/{{left_lung,right_lung,heart,lungs}}/")
    return 0


def _cmd_segment_eval(args: argparse.Namespace) -> int:
    import json

    from cxrlib.anatomy.segmenter import (
        Segmenter,
        evaluate,
        format_summary,
        segmenter_data,
        summarise,
    )

    seg = Segmenter.from_pretrained(args.checkpoint)
    df = segmenter_data(
        wingspan=args.wingspan, manifest=args.manifest, work=args.checkpoint / "data"
    )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    subset = df.subset(df.frame["split"].isin(splits))
    if len(subset) == 0:
        raise CxrError(f"no rows in split(s) {', '.join(splits)}")
    per_image = evaluate(seg, subset)
    summary = summarise(per_image)
    summary["splits"] = splits
    print(format_summary(summary))
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if args.per_image:
        args.per_image.parent.mkdir(parents=True, exist_ok=True)
        per_image.to_csv(args.per_image, index=False)
    return 0


# --- cxr train -------------------------------------------------------------------------


def _add_train(sub: argparse._SubParsersAction) -> None:
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
        choices=_profiles,
        metavar="PROFILE",
        default="default",
        help="preset: %(choices)s (default %(default)s)",
    )
    p.add_argument("--config", type=Path, default=None, help="YAML or JSON (partial) tree")
    p.add_argument(
        "--mode", choices=MODES, metavar="MODE", help="anatomical attention mode: %(choices)s"
    )
    p.add_argument("--seed", type=_int, default=None, help="run seed")
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


def _add_labeler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labeler", choices=("rule", "chexbert"), default="rule", help="default rule")
    p.add_argument(
        "--chexbert",
        type=Path,
        default=None,
        metavar="PATH",
        help="CheXbert checkpoint chexbert.pth (default $CXR_CHEXBERT)",
    )


def _add_bootstrap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap",
        type=_non_negative_int,
        default=1000,
        metavar="N",
        help="bootstrap resamples, 0: no intervals (default 1000)",
    )
    p.add_argument("--seed", type=_int, default=0, help="bootstrap seed (default 0)")


# --- cxr label -------------------------------------------------------------------------


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="CheXpert labels of report texts (rule-based cxrlib-rule-v3, no download)",
        description=(
            "Label the report texts of one CSV column with the 14 CheXpert observations "
            "(1, 0, -1, blank) and the laterality of six of them; write the input columns "
            "plus the labels. 'cxr label iu-validate' measures the labeler against the "
            "IU X-ray MeSH annotations, 'cxr label agreement' against a manifest's label "
            "columns (e.g. MIMIC-CXR's CheXpert labels)."
        ),
    )
    p.add_argument(
        "--in", dest="in_csv", metavar="CSV", type=Path, default=None, help="input .csv/.csv.gz"
    )
    p.add_argument(
        "--text-column", default="findings", help="column with the report text (default findings)"
    )
    p.add_argument("--out", dest="out_csv", metavar="CSV", type=Path, default=None, help="output")
    p.set_defaults(handler=_cmd_label, label_parser=p)
    lsub = p.add_subparsers(dest="label_command", metavar="COMMAND", required=False)
    v = lsub.add_parser(
        "iu-validate",
        help="precision/recall/F1 against IU X-ray MeSH terms, odd and even report ids",
        description=(
            "Label FINDINGS + IMPRESSION of the IU X-ray reports and compare with their "
            "manual MeSH terms; odd ids = development, even ids = held-out. Writes "
            "iu_labeler_metrics.csv, iu_labeler_laterality.csv, iu_labeler_reports.csv "
            "and iu_labeler_validation.md (numbers only, no report text) into DIR."
        ),
    )
    v.add_argument(
        "--reports",
        type=Path,
        default=None,
        help="NLMCXR_reports.tgz or its folder (default ../shared/data/iu-xray/...)",
    )
    v.add_argument(
        "--out", dest="validate_out", metavar="DIR", type=Path, required=True, help="output folder"
    )
    v.set_defaults(handler=_cmd_label_iu_validate)
    a = lsub.add_parser(
        "agreement",
        help="labels of a manifest's report text against its label columns (F1, 95%% CI)",
        description=(
            "Label a manifest's report text and compare, study by study, with its 14 label "
            "columns: precision/recall/F1 per observation, micro/macro over 14 and 5, both "
            "uncertainty conventions, exact agreement, bootstrap intervals over studies. "
            "Rows with empty text or no label are skipped and counted. Writes "
            "agreement.json, agreement_per_observation.csv and agreement.md into DIR."
        ),
    )
    a.add_argument("--manifest", required=True, type=Path, help="manifest CSV with labels")
    a.add_argument(
        "--text-column",
        dest="agreement_text",
        metavar="COLUMNS",
        default="findings",
        help="report text column(s), comma-separated, joined by a blank line; use the "
        "text the labels came from (MIMIC-CXR: impression) (default findings)",
    )
    a.add_argument(
        "--out", dest="agreement_out", required=True, type=Path, metavar="DIR", help="output"
    )
    _add_labeler_options(a)
    a.add_argument(
        "--split",
        choices=("train", "validate", "test", "all"),
        default="all",
        help="manifest split to compare (default all)",
    )
    _add_bootstrap_options(a)
    a.add_argument("--no-progress", action="store_true", help="no progress bar")
    a.set_defaults(handler=_cmd_label_agreement)


def _cmd_label(args: argparse.Namespace) -> int:
    from cxrlib.metrics.labeler import label_csv

    if args.in_csv is None or args.out_csv is None:
        args.label_parser.error(
            "--in and --out are required (or a COMMAND: iu-validate, agreement)"
        )
    summary = label_csv(args.in_csv, args.out_csv, text_column=args.text_column)
    print(
        f"labelled {summary['rows']} reports ({summary['empty_texts']} empty) of column "
        f"{args.text_column!r} with {summary['labeler']}: {summary['out']}"
    )
    return 0


def _cmd_label_agreement(args: argparse.Namespace) -> int:
    from cxrlib.evaluate.agreement import agreement_files

    columns = tuple(c.strip() for c in args.agreement_text.split(",") if c.strip())
    result = agreement_files(
        args.manifest,
        args.agreement_out,
        text_columns=columns,
        labeler=args.labeler,
        chexbert=args.chexbert,
        split=None if args.split == "all" else args.split,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(result.markdown().split("\nConventions:")[0].rstrip())
    out = args.agreement_out
    print(f"wrote {out}/agreement.json, agreement_per_observation.csv, agreement.md")
    return 0


def _cmd_label_iu_validate(args: argparse.Namespace) -> int:
    from cxrlib.evaluate.iu_validation import SHARED_REPORTS, markdown_tables, write_validation

    reports = args.reports if args.reports is not None else SHARED_REPORTS
    result, written = write_validation(reports, args.validate_out)
    print(markdown_tables(result))
    for path in written:
        print(f"wrote {path}")
    return 0


# --- cxr evaluate ----------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="clinical F1, RadGraph F1 and lexical metrics of generated Findings, with CIs",
        description=(
            "Compare generated Findings (CSV with image_id, generated) with a manifest's "
            "findings: CheXpert F1 (micro/macro over 14 and 5 observations, uncertain as "
            "negative and as positive), RadGraph F1, BLEU-1..4, METEOR, ROUGE-L, CIDEr, each "
            "with a 95% bootstrap interval over studies. Writes DIR/metrics.json, "
            "metrics.md, per_observation.csv, labels_generated.csv, labels_reference.csv. "
            "With --run (the training run that generated the predictions) and a manifest "
            "with lung masks: the attention grounding too (share of each sentence's "
            "attention on the named side's lung and the finding's drawn region; "
            "attention_grounding.csv, attention_sentences.csv)."
        ),
    )
    p.add_argument(
        "--pred", required=True, type=Path, metavar="CSV", help="CSV with image_id, generated"
    )
    p.add_argument(
        "--ref", required=True, type=Path, metavar="MANIFEST", help="manifest (references)"
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    _add_labeler_options(p)
    p.add_argument(
        "--ref-labels",
        choices=("labeler", "manifest"),
        default="labeler",
        help="reference labels: the labeler on the reference text, or the manifest's columns",
    )
    p.add_argument(
        "--split",
        choices=("train", "validate", "test", "all"),
        default="test",
        help="manifest split the predictions must belong to (default test)",
    )
    _add_bootstrap_options(p)
    p.add_argument(
        "--radgraph-model",
        choices=("radgraph", "radgraph-xl"),
        default="radgraph",
        help="RadGraph annotation model when installed (default radgraph)",
    )
    p.add_argument(
        "--run",
        type=Path,
        metavar="RUN",
        help="training run that generated --pred: also measure the attention grounding",
    )
    p.add_argument(
        "--attention-studies",
        type=_non_negative_int,
        default=100,
        metavar="N",
        help="studies the attention grounding reads at most (default 100; 0: all)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrlib.evaluate.evaluate import evaluate_files

    result = evaluate_files(
        args.pred,
        args.ref,
        args.out,
        labeler=args.labeler,
        chexbert=args.chexbert,
        ref_labels=args.ref_labels,
        split=None if args.split == "all" else args.split,
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        radgraph_model=args.radgraph_model,
        progress=not args.no_progress,
        run=args.run,
        attention_studies=args.attention_studies or None,
    )
    print(result.markdown().split("\nConventions:")[0].rstrip())
    extra = ", attention_grounding.csv, attention_sentences.csv" if result.attention else ""
    print(f"wrote {args.out}/metrics.json, metrics.md, per_observation.csv, labels_*.csv{extra}")
    return 0


# --- cxr generate ----------------------------------------------------------------------


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate Findings for a manifest split with a trained run",
        description=(
            "Load a training run's best (else last) checkpoint and its config, and write "
            "image_id,generated for every image of the split (the input of cxr evaluate)."
        ),
    )
    p.add_argument("--run", required=True, type=Path, help="training run folder (cxr train --out)")
    p.add_argument("--manifest", required=True, type=Path, help="manifest CSV")
    p.add_argument("--split", default="test", help="split to generate for (default test)")
    p.add_argument("--out", required=True, type=Path, help="output CSV")
    p.add_argument("--max-images", type=_positive_int, default=None, help="first N images only")
    p.add_argument("--num-beams", type=_positive_int, default=None, help="default: the model's")
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


def _add_report(sub: argparse._SubParsersAction) -> None:
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


# --- cxr export ------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
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


# --- the command -----------------------------------------------------------------------

# Each entry declares one top-level subcommand. Later capabilities add theirs here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_phantom,
    _add_workbook,
    _add_bench,
    _add_manifest,
    _add_masks,
    _add_segment,
    _add_priors,
    _add_train,
    _add_generate,
    _add_report,
    _add_export,
    _add_label,
    _add_evaluate,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``cxr`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="cxrlib: chest X-ray Findings generation with anatomy-guided attention.",
    )
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cxr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("cxr: interrupted", file=sys.stderr)
        return 130
    except (CxrError, FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as err:
        if args.debug:
            traceback.print_exc()
        message = str(err).rstrip() or type(err).__name__
        print(f"cxr: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
