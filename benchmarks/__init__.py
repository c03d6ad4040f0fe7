"""Benchmark stage: runners per backend, timing method and reports.

Installed as ``vitcompress.benchmarks``; stands on ``vitcompress`` and ``vitcompress.exporters``.
``studies`` (the studies and the fuzz check) is run from a checkout and left out of the wheel.
"""

if __name__ != "vitcompress.benchmarks":  # the folder is linked into the package: one file, one module name
    raise ImportError("import this package as vitcompress.benchmarks, not by its folder name")
