"""``cxr segment`` and ``cxr priors``: the lung/heart segmenter and the layer priors."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.base.errors import CxrError
from cxrlib.base.vocabulary import MASK_SOURCES, PRIOR_PADDINGS, PRIOR_SCHEDULES, PRIOR_STRUCTURES
from cxrlib.cli._args import integer, path_or_url, positive_float, positive_int

# --- cxr segment -----------------------------------------------------------------------


def add_segment(sub: argparse._SubParsersAction) -> None:
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
    t.add_argument("--epochs", type=positive_int, default=None, help="default 40")
    t.add_argument("--image-size", type=positive_int, default=None, help="default 256")
    t.add_argument("--seed", type=integer, default=None, help="default 0")
    t.add_argument("--threads", type=integer, default=None, help="torch threads (default: torch's)")
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


# --- cxr priors ------------------------------------------------------------------------


def add_priors(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "priors",
        help="per-layer anatomical priors for every image of a manifest (cached)",
        description=(
            "Unite the selected structures' masks, area-downsample them to the encoder's "
            "patch grid (IMAGE_SIZE / PATCH_SIZE per side) and smooth them once per decoder "
            "layer, broad to focused. Masks come from the manifest, else the segmenter, "
            "else none (uniform prior). Writes shards DIR/priors-<key>/shard-*.safetensors: priors "
            "(N, LAYERS, grid*grid) float32 in [0, 1], grid masks and image ids; images "
            "already there under the same settings and unchanged masks are reused."
        ),
    )
    p.add_argument("--manifest", required=True, type=path_or_url, help="manifest CSV or URL")
    p.add_argument("--out", required=True, type=Path, help="cache folder (created)")
    p.add_argument("--schedule", choices=PRIOR_SCHEDULES, help="default linear")
    p.add_argument(
        "--structures",
        help=f"comma-separated, from {', '.join(PRIOR_STRUCTURES)} (default lungs,heart)",
    )
    p.add_argument("--image-size", type=positive_int, help="encoder input px (default 224)")
    p.add_argument("--patch-size", type=positive_int, help="patch px (default 16)")
    p.add_argument("--layers", type=positive_int, help="decoder layers (default 12)")
    p.add_argument(
        "--sigma-start",
        type=positive_float,
        help="linear: layer 0, a fraction of the image side (default 13/96)",
    )
    p.add_argument(
        "--sigma-end",
        type=positive_float,
        help="linear: last layer, a fraction of the image side (default 1/48)",
    )
    p.add_argument(
        "--sigma",
        type=positive_float,
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

    if isinstance(args.manifest, Path) and not args.manifest.is_file():
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
