"""Datasets: the manifest schema, the phantom generator and the real-data adapters."""
