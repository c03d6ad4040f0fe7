"""Latency search: pruning to a latency target on a backend, and the ``compress`` workflow.

Stands on the core, the exporters and the bench stage (``vitcompress.benchmarks``: its runners and
timing measure every figure here); below ``vitcompress.commands``. Modules, in the order a run uses
them:

- ``probes``: the sublayer, rest-of-model, empty and token-reducer probes a latency table is
  measured on (ONNX graphs built op for op, or the probe modules on the torch backends);
- ``profile``: ``vitcompress profile``, ``profile_latency(model, ProfileConfig(...))``: measure a
  model's latency table on a backend;
- ``tables``: a latency table summarised for the terminal and its step sweeps plotted;
- ``prune``: ``vitcompress prune --latency-reduction R``, ``prune_to_latency(...)``: the one-shot
  prune on the predicted latency, then the input and the pruned model measured together;
- ``search``: the joint search over depth, token schedule and widths for a latency target;
- ``compress``: ``vitcompress compress``, ``compress(model, CompressConfig(...), output)``: profile,
  search, prune, distil, export and bench, each stage written and resumable.

The latency model itself (``LatencyTable``: the table, the predictor, ``latency_budget``) is in the
core, ``vitcompress.latency``, and the budget it plugs into is ``vitcompress.budget``: the core
pruner selects on a latency budget with a given table (``vitcompress.prune(..., latency_reduction=R,
table=...)``) without measuring anything. What measures, checks by measurement and chains the stages
is here.
"""
