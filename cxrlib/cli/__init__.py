"""The ``cxr`` command: thin wrappers over the library, argument parsing and errors.

One module per group of subcommands (``datasets``, ``workbook``, ``bench``, ``anatomy``,
``runs``, ``inference``, ``evaluation``); what several share (value types, common options)
is in ``_args``. Every subcommand is a function ``_cmd_<name>(args) -> int`` beside the
function ``add_<command>`` that declares its arguments. User errors
(:class:`cxrlib.base.errors.CxrError`, and the system's missing-file, not-a-folder and
permission errors, which name the path) end with one line ``cxr: error: ...`` and exit 1.
Every other exception (``ValueError`` and ``TypeError`` included: a caller's misuse of
the API) is a bug: ``cxr: internal error (a bug): ...`` and a hint, exit 1. ``--debug``
adds the traceback. Argument errors exit 2 (argparse's convention). The rule:
docs/architecture.md, "Errors: one rule".

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
from cxrlib.base.errors import CxrError, one_line
from cxrlib.cli import anatomy, bench, datasets, evaluation, inference, runs, workbook

INTERNAL_ERROR_HINT = "cxr: rerun with --debug for the traceback, and please report it"

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
    except (CxrError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        if args.debug:
            traceback.print_exc()
        message = str(err).rstrip() or type(err).__name__
        print(f"cxr: error: {message}", file=sys.stderr)
        return 1
    except Exception as err:  # anything else (ValueError, TypeError, ...) is a bug
        if args.debug:
            traceback.print_exc()
        bug = f"{type(err).__name__}: {one_line(err)}"
        print(f"cxr: internal error (a bug): {bug}\n{INTERNAL_ERROR_HINT}", file=sys.stderr)
        return 1
