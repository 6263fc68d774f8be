"""``cxr bench labeler``: reports/s of the rule-based labeler on one core, on phantom
Findings and (when present) the IU X-ray reports."""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from cxrlib.base.provenance import provenance
from cxrlib.data.iu_xray import iter_reports
from cxrlib.data.phantom import phantom_study
from cxrlib.data.phantom.text import findings_text
from cxrlib.evaluate.iu_validation import SHARED_REPORTS, report_text
from cxrlib.experiment.bench.harness import best_rate, cpu_name
from cxrlib.metrics import labeler as lab

LABELER_TARGET_REPORTS_PER_S = 1000.0


def bench_labeler(
    n: int = 2000,
    repeats: int = 3,
    seed: int = 0,
    iu: str | os.PathLike | None = None,
) -> dict:
    """Report labeler (``cxrlib-rule-v3``) throughput on one core, reports/s.

    Measured in one process (pure Python: one core), best of ``repeats``, after one
    warm-up: :func:`cxrlib.metrics.labeler.label_reports` on ``n`` synthetic Findings
    written by the phantom text generator (``cxrlib.data.phantom``; no real report
    text), and the same on the FINDINGS + IMPRESSION of every IU X-ray report when
    ``iu`` (default ``../shared/data/iu-xray/NLMCXR_reports.tgz``) exists. Ratios:
    each rate vs the 1,000 reports/s target; the lexicon compilation time is given
    apart (a one-off per process).
    """
    texts = [
        findings_text(phantom_study(i, seed), np.random.default_rng([seed, i, 1])) for i in range(n)
    ]
    t0 = time.perf_counter()
    labeler = lab.Labeler()
    compile_s = time.perf_counter() - t0
    labeler.label_many(texts[: min(n, 50)])  # warm-up
    rate_phantom, _ = best_rate(lambda: labeler.label_many(texts), n, repeats)
    rates = {"phantom_findings": round(rate_phantom, 1)}
    ratios = {"phantom_vs_target_1000": round(rate_phantom / LABELER_TARGET_REPORTS_PER_S, 2)}
    sizes = {"phantom_findings_mean_chars": round(float(np.mean([len(t) for t in texts])), 1)}
    iu_path = None
    if iu is None:
        iu = SHARED_REPORTS if SHARED_REPORTS.is_file() else None
    if iu is not None:
        iu_path = str(iu)
        reports = [
            report_text(r.sections.get("FINDINGS", ""), r.sections.get("IMPRESSION", ""))
            for r in iter_reports(iu)
        ]
        rate_iu, _ = best_rate(lambda: labeler.label_many(reports), len(reports), repeats)
        rates["iu_findings_impression"] = round(rate_iu, 1)
        ratios["iu_vs_target_1000"] = round(rate_iu / LABELER_TARGET_REPORTS_PER_S, 2)
        sizes["iu_reports"] = len(reports)
        sizes["iu_mean_chars"] = round(float(np.mean([len(t) for t in reports])), 1)
    return {
        "benchmark": "labeler",
        "labeler": lab.LABELER_NAME,
        "n": n,
        "repeats": repeats,
        "iu_reports_path": iu_path,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "lexicon_compile_s": round(compile_s, 4),
        "reports_per_s": rates,
        "ratios": ratios,
        "text_sizes": sizes,
        "provenance": provenance(),
    }


def format_labeler_table(result: dict) -> str:
    """The labeler benchmark as an aligned two-column text table."""
    rows = [(f"reports/s, {k}", v) for k, v in result["reports_per_s"].items()]
    rows += list(result["ratios"].items())
    rows += [("lexicon compile s (once)", result["lexicon_compile_s"])]
    width = max(len(k) for k, _ in rows)
    head = (
        f"labeler benchmark ({result['labeler']}, one core): n={result['n']} synthetic, "
        f"best of {result['repeats']}"
    )
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])
