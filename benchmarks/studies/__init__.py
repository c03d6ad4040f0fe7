"""The studies and the fuzz check: scripts run from a checkout, not installed with the package.

``python -m vitcompress.benchmarks.studies.<name>`` from the checkout root (each module's docstring
has its command): ``criteria_study``, ``scorer_study``, ``recovery_study``, ``tokens_study``,
``quantize_study``, ``latency_study``, ``latency_model_study`` measure the methods (their results
are in docs/), and ``fuzz`` checks the command line's promises (docs/guarantees.md) over generated
cases. They stand on every layer of the package, the command line included.
"""
