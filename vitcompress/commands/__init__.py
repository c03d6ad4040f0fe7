"""The ``vitcompress`` commands, one module per family of commands, loaded when a command runs.

``prune`` (prune, info, models), ``tokens``, ``train`` (train, finetune, eval, pipeline),
``export``, ``bench`` and ``latency`` (profile, compress). Each command turns its options into one library call and prints the
result; the options of the library's settings dataclasses are generated from their fields
(``options.config_options``). The entry point, the command table and the error reporting are in
``vitcompress.cli``.
"""
