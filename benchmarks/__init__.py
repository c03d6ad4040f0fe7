"""Benchmark stage: runners per backend, timing method and reports.

Installed as ``vitcompress.benchmarks``; stands on ``vitcompress`` and ``vitcompress.exporters``.
"""
