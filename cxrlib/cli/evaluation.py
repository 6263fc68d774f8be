"""``cxr label`` and ``cxr evaluate``: labels of report texts and the metrics of
generated Findings."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrlib.cli._args import add_bootstrap_options, add_labeler_options, non_negative_int

# --- cxr label -------------------------------------------------------------------------


def add_label(sub: argparse._SubParsersAction) -> None:
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
    add_labeler_options(a)
    a.add_argument(
        "--split",
        choices=("train", "validate", "test", "all"),
        default="all",
        help="manifest split to compare (default all)",
    )
    add_bootstrap_options(a)
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


def add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    add_labeler_options(p)
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
    add_bootstrap_options(p)
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
        type=non_negative_int,
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
