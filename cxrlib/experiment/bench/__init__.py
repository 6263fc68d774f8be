"""Benchmarks behind ``cxr bench``: each prints a table and JSON, and every speed is
also given as a ratio against a baseline measured in the same run (no timing asserts
live in the tests; speed claims live here and in ``benchmarks/README.md``).

One module per benchmark (:mod:`~cxrlib.experiment.bench.phantom`, ``priors``,
``model``, ``features``, ``labeler``, ``scale``; ``costs`` writes the README's cost
section from their files); what they share, the interleaved timing of a
baseline and its candidates, is :mod:`~cxrlib.experiment.bench.harness`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrlib.experiment.bench.features import bench_features, format_features_table
from cxrlib.experiment.bench.harness import format_table
from cxrlib.experiment.bench.labeler import bench_labeler, format_labeler_table
from cxrlib.experiment.bench.model import bench_model, format_model_table
from cxrlib.experiment.bench.phantom import bench_phantom
from cxrlib.experiment.bench.priors import bench_priors
from cxrlib.experiment.bench.scale import bench_scale, format_scale_table

BENCHMARKS = {  # name: (measure, format its result as a table)
    "phantom": (bench_phantom, format_table),
    "priors": (bench_priors, format_table),
    "model": (bench_model, format_model_table),
    "features": (bench_features, format_features_table),
    "labeler": (bench_labeler, format_labeler_table),
    "scale": (bench_scale, format_scale_table),
}


def run(name: str, out: str | os.PathLike | None = None, **kwargs) -> dict:
    """Run benchmark ``name``, print its table and JSON, write JSON to ``out`` if given."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (choose from {', '.join(BENCHMARKS)})")
    bench, table = BENCHMARKS[name]
    result = bench(**kwargs)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return result
