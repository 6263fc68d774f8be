"""The ``cxr`` command: thin wrappers over the library, argument parsing and errors.

Every subcommand is a function ``_cmd_<name>(args) -> int`` beside the function that
declares its arguments. User errors (:class:`cxrlib.errors.CxrError`, missing files,
bad values) end with one line ``cxr: error: ...`` and exit 1; ``--debug`` shows the
traceback instead. Argument errors exit 2 (argparse's convention).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from cxrlib import __version__
from cxrlib.errors import CxrError

Handler = Callable[[argparse.Namespace], int]


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

    summary = write_phantom(args.out, n=args.n, seed=args.seed, size=args.size, workers=args.workers)
    print(summary.describe())
    return 0


# --- cxr workbook ----------------------------------------------------------------------


def _add_workbook(sub: argparse._SubParsersAction) -> None:
    from cxrlib.workbook import PROFILES

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
    r.add_argument("--profile", choices=sorted(PROFILES), default="default", help="settings preset")
    r.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/<profile>-<timestamp>/)"
    )
    r.add_argument(
        "--notebooks",
        type=Path,
        default=None,
        help="folder of the numbered notebooks (default: the repository's notebooks/)",
    )
    r.set_defaults(handler=_cmd_workbook_run)


def _cmd_workbook_run(args: argparse.Namespace) -> int:
    from cxrlib.workbook import run_workbook

    result = run_workbook(args.profile, out=args.out, notebooks=args.notebooks)
    print(f"workbook run complete: {result.run_dir}")
    return 0


# --- the command -----------------------------------------------------------------------

# Each entry declares one top-level subcommand. Later capabilities add theirs here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_phantom,
    _add_workbook,
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
