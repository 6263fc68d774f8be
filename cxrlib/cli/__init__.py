"""The ``cxr`` command: thin wrappers over the library, argument parsing and errors.

One module per group of subcommands (``datasets``, ``workbook``, ``bench``, ``anatomy``,
``runs``, ``inference``, ``evaluation``); what several share (value types, common options)
is in ``_args``. Every subcommand is a function ``_cmd_<name>(args) -> int`` beside the
function ``add_<command>`` that declares its arguments. User errors
(:class:`cxrlib.base.errors.CxrError`, missing files, bad values) end with one line
``cxr: error: ...`` and exit 1; ``--debug`` shows the traceback instead. Argument errors
exit 2 (argparse's convention).

A subcommand imports the library code it runs inside its ``_cmd_`` function (deferred on
purpose: ``cxr --help`` and a mistyped option answer without loading torch and the whole
package); this is the one package that does so. The choices of its flags come from
:mod:`cxrlib.base.vocabulary` and the config profiles, which load no torch.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence

from cxrlib import __version__
from cxrlib.base.errors import CxrError
from cxrlib.cli import anatomy, bench, datasets, evaluation, inference, runs, workbook

# --- the command -----------------------------------------------------------------------

# Each entry declares one top-level subcommand, in the order of ``cxr --help``.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    datasets.add_phantom,
    workbook.add_workbook,
    bench.add_bench,
    datasets.add_manifest,
    datasets.add_masks,
    anatomy.add_segment,
    anatomy.add_priors,
    runs.add_train,
    runs.add_generate,
    inference.add_report,
    runs.add_export,
    evaluation.add_label,
    evaluation.add_evaluate,
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
