"""``cxr bench``: the measured speed claims."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.cli._args import integer, positive_int


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed claims (table + JSON, ratios against a same-run baseline)",
    )
    bsub = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    ph = bsub.add_parser("phantom", help="phantom generation images/s on one and two processes")
    ph.add_argument("--n", type=positive_int, default=200, help="images per measurement")
    ph.add_argument("--size", type=positive_int, default=256, help="image side in px")
    ph.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    ph.set_defaults(handler=_cmd_bench_phantom)
    pr = bsub.add_parser("priors", help="layer-prior masks/s: vectorised vs a naive loop")
    pr.add_argument("--n", type=positive_int, default=4096, help="masks (vectorised run)")
    pr.add_argument("--grid", type=positive_int, default=32, help="patch grid side")
    pr.add_argument("--layers", type=positive_int, default=12, help="decoder layers")
    pr.add_argument(
        "--schedule", choices=("thesis", "linear", "constant"), default="thesis", help="schedule"
    )
    pr.add_argument("--threads", type=integer, default=0, help="torch threads (0: torch's default)")
    pr.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    pr.set_defaults(handler=_cmd_bench_priors)
    _add_bench_model(bsub)
    fe = bsub.add_parser(
        "features",
        help="training epoch with the encoder feature cache vs recomputing the encoder (tiny)",
    )
    fe.add_argument("--n", type=positive_int, default=128, help="phantom images (one epoch)")
    fe.add_argument("--batch", type=positive_int, default=16, help="images per training step")
    fe.add_argument(
        "--size", type=positive_int, default=224, help="phantom side in px (resized to 224)"
    )
    fe.add_argument("--repeats", type=positive_int, default=3, help="epochs each way (best)")
    fe.add_argument("--threads", type=integer, default=0, help="torch threads (0: torch's default)")
    fe.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    fe.set_defaults(handler=_cmd_bench_features)
    la = bsub.add_parser(
        "labeler", help="report labeler reports/s on one core vs the 1,000/s target"
    )
    la.add_argument("--n", type=positive_int, default=2000, help="synthetic reports")
    la.add_argument("--repeats", type=positive_int, default=3, help="timed repeats (best)")
    la.add_argument(
        "--iu",
        type=Path,
        default=None,
        help="IU X-ray NLMCXR_reports.tgz (default ../shared/data/iu-xray/... if present)",
    )
    la.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    la.set_defaults(handler=_cmd_bench_labeler)
    _add_bench_scale(bsub)


def _add_bench_model(bsub: argparse._SubParsersAction) -> None:
    """``cxr bench model``: the cost of the anatomical attention."""
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
    mo.add_argument("--batch", type=positive_int, default=None, help="images (preset default)")
    mo.add_argument(
        "--text-tokens", type=positive_int, default=None, help="text tokens (preset default)"
    )
    mo.add_argument(
        "--new-tokens", type=positive_int, default=None, help="tokens decoded (preset default)"
    )
    mo.add_argument("--repeats", type=positive_int, default=None, help="timed repeats")
    mo.add_argument("--threads", type=integer, default=0, help="torch threads (0: torch's default)")
    mo.add_argument(
        "--bias-kernel",
        choices=("auto", "mask", "fold", "cudnn"),
        default="auto",
        help="how soft/strict add the bias in causal training passes (auto: the device's)",
    )
    mo.add_argument(
        "--encoder-in-step",
        action="store_true",
        help="the training step starts from pixels and runs the frozen encoder "
        "(a run without the feature cache)",
    )
    mo.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    mo.set_defaults(handler=_cmd_bench_model)


def _add_bench_scale(bsub: argparse._SubParsersAction) -> None:
    """``cxr bench scale`` and ``cxr bench costs`` (the README's table made from it)."""
    sc = bsub.add_parser(
        "scale",
        help="the full profile's data path on the MIMIC-CXR rehearsal layout at N images: "
        "time, peak RSS and disk per stage",
    )
    sc.add_argument(
        "--n", type=positive_int, nargs="+", default=[2000, 20000, 100000], help="sizes"
    )
    sc.add_argument("--sample", type=positive_int, default=512, help="images of sampled stages")
    sc.add_argument("--work", type=Path, default=Path("/tmp/cxr-scale"), help="scratch folder")
    sc.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    sc.set_defaults(handler=_cmd_bench_scale)
    co = bsub.add_parser(
        "costs", help="write the README's 'Running on MIMIC-CXR' tables from benchmark files"
    )
    co.add_argument("--scale", type=Path, required=True, help="JSON of cxr bench scale")
    co.add_argument("--gpu", type=Path, required=True, help="JSON of cxr bench model on a GPU")
    co.add_argument("--readme", type=Path, default=Path("README.md"), help="default README.md")
    co.add_argument("--check", action="store_true", help="only compare; fail when it differs")
    co.set_defaults(handler=_cmd_bench_costs)


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
        encoder_in_step=args.encoder_in_step,
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


def _cmd_bench_scale(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench import run

    run("scale", out=args.json, sizes=tuple(args.n), work=args.work, sample=args.sample)
    return 0


def _cmd_bench_costs(args: argparse.Namespace) -> int:
    from cxrlib.experiment.bench.costs import update_costs

    changed = update_costs(args.scale, args.gpu, args.readme, check=args.check)
    print(f"{args.readme}: " + ("updated" if changed else "up to date"))
    return 0
