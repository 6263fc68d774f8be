"""``cxr phantom``, ``cxr manifest`` and ``cxr masks``: datasets and their manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.base.vocabulary import PHANTOM_LAYOUTS
from cxrlib.cli._args import integer, positive_int, unit_fraction

# --- cxr phantom -----------------------------------------------------------------------


def add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="write a synthetic chest radiograph dataset with known ground truth",
        description=(
            "Write N synthetic frontal chest radiographs with lung/heart masks, CheXpert "
            "labels, attributes and Findings text, plus DIR/manifest.csv. Same arguments "
            "give byte-identical output. With --layout mimic-cxr-jpg or chexpert-plus, "
            "write N frontal images (plus laterals) in that release's own layout instead, "
            "for `cxr manifest mimic-cxr|chexpert-plus --root DIR`: a rehearsal dataset."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--n", required=True, type=positive_int, help="number of images")
    p.add_argument("--seed", type=integer, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=positive_int, default=256, help="image side in px (default 256)")
    p.add_argument("--workers", type=positive_int, default=1, help="processes (default 1)")
    p.add_argument(
        "--layout",
        choices=PHANTOM_LAYOUTS,
        default=PHANTOM_LAYOUTS[0],
        help="manifest (default: DIR/manifest.csv, images, masks) or a real release's layout",
    )
    p.add_argument(
        "--pool",
        type=positive_int,
        default=512,
        help="with --layout: images rendered (default 512); every file hard-links to one",
    )
    p.set_defaults(handler=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from cxrlib.data.phantom import write_phantom

    if args.layout != PHANTOM_LAYOUTS[0]:
        from cxrlib.data.phantom.layouts import write_layout

        layout = write_layout(
            args.out,
            args.layout,
            n=args.n,
            seed=args.seed,
            size=args.size,
            pool=args.pool,
            workers=args.workers,
        )
        print(layout.describe())
        return 0
    summary = write_phantom(
        args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers
    )
    print(summary.describe())
    return 0


# --- cxr manifest ----------------------------------------------------------------------


def add_manifest(sub: argparse._SubParsersAction) -> None:
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
        type=unit_fraction,
        default=0.1,
        help="fraction of official-train patients put in validate (default 0.1)",
    )
    c.add_argument("--seed", type=integer, default=0, help="split seed (default 0)")
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
    iu.add_argument("--seed", type=integer, default=0, help="split seed (default 0)")
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
    w.add_argument("--seed", type=integer, default=0, help="split seed (default 0)")
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
    f.add_argument("--seed", type=integer, default=0, help="split seed (default 0)")
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


def add_masks(sub: argparse._SubParsersAction) -> None:
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
