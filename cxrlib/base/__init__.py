"""The base layer: errors, atomic writes, provenance, image and mask files, and the
statistics of every metric (bootstrap intervals, paired tests, seeds).

Everything above imports it; it imports nothing of cxrlib.
"""
