"""``cxr workbook``: run the notebooks, regenerate the README's results."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.cli._args import PROFILE_NAMES, seed_list


def add_workbook(sub: argparse._SubParsersAction) -> None:
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
        choices=PROFILE_NAMES,
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
        type=seed_list,
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
        "<!-- results:end --> with the headline results of the run folder RUN, and, "
        "when docs/results.md exists beside the README, its text between "
        "<!-- results-details:start --> and <!-- results-details:end --> with the long "
        "tables (intervals, tests, timings), all generated from the run's files; the "
        "rest is left as it is. --check only compares and exits 1 when they differ."
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


def _cmd_workbook_readme(args: argparse.Namespace) -> int:
    from cxrlib.experiment.results import DETAILS_PAGE, update_readme

    changed = update_readme(args.run, args.readme, check=args.check, replicate=args.replicate)
    page = args.readme.parent / DETAILS_PAGE
    where = f"{args.readme} and {page}" if page.is_file() else str(args.readme)
    if args.check:
        print(f"{where}: the results section matches {args.run}")
    elif changed:
        print(f"{where}: results section regenerated from {args.run}")
    else:
        print(f"{where}: results section already up to date with {args.run}")
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
