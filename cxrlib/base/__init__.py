"""The base layer: errors, atomic writes, provenance, and image and mask files.

Everything above imports it; it imports nothing of cxrlib.
"""
