"""Experiments over the layers below: the ablation, the workbook, figures, the README's
results, the explorer, single-image reports, export and benchmarks.
"""
