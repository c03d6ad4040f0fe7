"""Graph clean-up with onnx-graphsurgeon: constant folding, dead-node removal, topological sort."""

from __future__ import annotations

import logging

import onnx

log = logging.getLogger(__name__)


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants (shape arithmetic included), drop unused nodes and sort topologically.

    Graph-level metadata, opset imports and IR version are preserved. Constant folding uses
    ONNX Runtime under the hood; if it fails on an unusual graph, the graph is still cleaned and
    sorted without folding (a warning is logged).
    """
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    try:
        graph.fold_constants(fold_shapes=True, error_ok=False)
    except Exception as e:  # pragma: no cover - depends on exotic graphs
        log.warning("constant folding skipped: %s: %s", type(e).__name__, str(e)[:200])
        graph = gs.import_onnx(model)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out


def node_count(model: onnx.ModelProto) -> int:
    """Top-level nodes of the main graph."""
    return len(model.graph.node)
