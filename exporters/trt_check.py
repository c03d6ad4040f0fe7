"""TensorRT compatibility check of an ONNX graph, on CPU and without TensorRT.

Walks every node (subgraphs of ``If``/``Loop``/``Scan`` included) and reports, by node name:

* operators that onnx-tensorrt's ``docs/operators.md`` (TensorRT 10.15, encoded in
  ``exporters/trt_operators.py``) marks unsupported or does not list, and operators of non-standard
  domains (plugins);
* the element type of an operator's data operand (its first input; ``Where``: inputs 1 and 2) and a
  ``Cast``'s target type outside the types operators.md lists for the operator, or a type TensorRT
  does not have at all;
* the restrictions operators.md states where a graph shows them (``_check_restrictions``): pooling
  without dilation in 2-D/3-D and no ``MaxPool`` indices, ``ScatterND`` without ``reduction``,
  ``LayerNormalization``'s first output only, constant ``Reduce*`` axes, ``CumSum`` axis and ``OneHot``
  depth, ``Dropout`` not training, ``LSTM``, ``STFT``, ``GridSample``, ``TensorScatter``,
  ``RotaryEmbedding`` and ``Attention`` (opset 23; a warning too: parsed only since TensorRT 10.14);
* ``TopK``: ``sorted=0`` (TensorRT's TopK always sorts); a ``K`` that is not INT64 (ONNX's type;
  ONNX Runtime refuses others) or holds more than one value; a constant ``K`` below 1; ``K`` above
  ``TOPK_MAX_K`` (3840, ``ITopKLayer``) at the largest profile shape, or beyond INT32 (the scalar
  ``ITopKLayer`` documents);
* ``TopK`` whose ``K`` is computed from a floating-point tensor (warning: TensorRT parses it, but
  ``K`` then hangs on float rounding; an integer input such as ``keep_permille`` is exact);
* ``Resize`` with ``antialias=1`` (onnx-tensorrt: "Antialiasing is not supported currently"), a mode
  other than ``nearest`` or ``linear``, a ``keep_aspect_ratio_policy`` other than ``stretch``, a
  coordinate transformation or nearest mode TensorRT lacks, or ``axes`` other than ``0..rank-1``
  with run-time scales;
* ``ScatterElements`` with a ``reduction``: the parser imports it through TensorRT's plugin, which the
  engine build does not load;
* 64-bit floats (``DOUBLE`` tensors or casts): TensorRT has no FP64;
* ``QuantizeLinear`` / ``DequantizeLinear`` (explicit quantization, ``_check_qdq``): the scale a
  constant of positive finite values, the zero point a constant of 0 typed INT8 or FLOAT8E4M3FN
  (TensorRT quantizes symmetrically, to those types; a missing zero point means UINT8).

``K`` that is not a constant is evaluated by ONNX Runtime's symbolic shape inference on a copy of
the graph whose input is fixed to the largest profile shape (and a runtime ``keep_permille`` input to
1000, its largest value); where it cannot be evaluated it is bounded by the length of the TopK axis
at that shape, and where that is unknown too a warning says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .runtime_keep import KEEP_INPUT
from .trt_operators import DOC_VERSION, ONNX_TO_DOC, OPERATORS, SUPPORTED, TYPE_INPUTS

TOPK_MAX_K = 3840

#: Operators (default ONNX domain) that onnx-tensorrt's operators.md marks supported (``trt_operators``).
TRT_SUPPORTED_OPS = SUPPORTED
INT32_MAX = 2**31 - 1

_DOUBLE = 11  # onnx.TensorProto.DOUBLE
_INT64 = 7  # onnx.TensorProto.INT64


@dataclass
class CompatIssue:
    """One finding: the node, its operator, what is wrong; ``severity`` is error or warning."""

    node: str
    op: str
    message: str
    severity: str = "error"

    def format(self) -> str:
        return f"{self.severity}: node {self.node!r} ({self.op}): {self.message}"


@dataclass
class CompatReport:
    """All findings; ``ok`` when there is no error (warnings allowed)."""

    nodes: int = 0
    issues: list[CompatIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[CompatIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"ok": self.ok, "nodes": self.nodes, "issues": [asdict(i) for i in self.issues]}

    def format(self) -> str:
        head = (
            f"TensorRT check: {self.nodes} nodes, {len(self.errors)} errors, "
            f"{len(self.issues) - len(self.errors)} warnings"
        )
        return "\n".join([head] + ["  " + i.format() for i in self.issues])


def _walk(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == 5:  # GRAPH
                yield from _walk(attr.g)
            elif attr.type == 10:  # GRAPHS
                for g in attr.graphs:
                    yield from _walk(g)


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _max_shape_model(
    model, max_input_shapes: dict[str, Sequence[int]], input_values: dict[str, Sequence[float]] | None = None
):
    """Shape-infer a copy of ``model`` with its inputs fixed to the largest profile shapes.

    Returns (inferred model, computed values of shape tensors). ONNX Runtime's symbolic shape
    inference is used first (it also evaluates shape arithmetic such as a TopK's K); where it stops
    at a node it cannot handle, what it inferred before that node is kept (exact, only incomplete).
    If it cannot start, ONNX's own shape inference (no values). ``input_values`` turns inputs into
    constants of the given values (a runtime keep rate at its largest value, so ``K`` evaluates
    to its largest value)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        shape = max_input_shapes.get(inp.name)
        if shape is None:
            continue
        for d, v in zip(inp.type.tensor_type.shape.dim, shape):
            if v is not None:
                d.Clear()
                d.dim_value = int(v)
    for name, value in (input_values or {}).items():
        inp = next((i for i in m.graph.input if i.name == name), None)
        if inp is None:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        m.graph.input.remove(inp)
    del m.graph.value_info[:]
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        sym = SymbolicShapeInference(2**31 - 1, True, False, 0)
        sym._preprocess(m)
        try:
            while sym.run_:
                sym._infer_impl()
            sym._update_output_from_vi()
        except Exception:
            pass  # keep the shapes and values inferred before the node it could not handle
        return sym.out_mp_, dict(sym.sympy_data_)
    except Exception:
        pass
    try:
        return onnx.shape_inference.infer_shapes(m, data_prop=True), {}
    except Exception:
        return m, {}


def _as_int(value) -> int | None:
    try:
        v = value[0] if isinstance(value, (list, tuple)) else value
        v = getattr(v, "reshape", lambda *_: v)(-1)
        v = v[0] if hasattr(v, "__len__") else v
        return int(v)
    except Exception:
        return None


def _constants(model) -> dict:
    vals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == 4:  # TENSOR
            vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return vals


def _dims(model) -> dict[str, list]:
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


_FLOATS = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16
#: ``coordinate_transformation_mode`` values TensorRT's Resize implements.
_RESIZE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
#: ``nearest_mode`` values TensorRT's Resize implements.
_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})


def _types(model) -> dict[str, int]:
    """Element type of every tensor whose type is known (inputs, value infos, outputs, constants)."""
    out = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if vi.type.tensor_type.elem_type:
            out[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        out[t.name] = t.data_type
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == 4:  # TENSOR
            out[n.output[0]] = n.attribute[0].t.data_type
        elif n.op_type == "Cast":
            out[n.output[0]] = int(_attr(n, "to"))
    return out


def _float_sources(name: str, producers: dict, types: dict[str, int]) -> list[str]:
    """The tensors that ``name`` is computed from (itself included) whose type is floating point,
    nearest first: graph inputs, initializers or intermediate values."""
    found, seen, todo = [], set(), [name]
    while todo:
        t = todo.pop(0)
        if t in seen or not t:
            continue
        seen.add(t)
        if types.get(t) in _FLOATS:
            found.append(t)
            continue
        node = producers.get(t)
        if node is not None and node.op_type != "Shape":  # a Shape's output never depends on values
            todo.extend(node.input)
    return found


def _check_topk(node, consts, values, dims, max_k, producers, types) -> list[tuple[str, str]]:
    """(message, severity) of a TopK: sortedness, K's type and size, K from a float tensor, K's value."""
    out = []
    if _attr(node, "sorted", 1) == 0:
        out.append(("sorted=0 is not supported (TensorRT's TopK always sorts)", "error"))
    k_name = node.input[1] if len(node.input) > 1 else ""
    k_type = types.get(k_name)
    if k_name and k_type is not None and k_type != _INT64:
        out.append(
            (
                f"K is {onnx.TensorProto.DataType.Name(k_type)}: ONNX's TopK takes an INT64 K (ONNX Runtime "
                "refuses other types); keep it INT64, TensorRT's parser passes it to ITopKLayer as a scalar",
                "error",
            )
        )
    k_dims = dims.get(k_name)
    if k_dims and all(d is not None for d in k_dims) and int(np.prod(k_dims)) != 1:
        out.append((f"K has shape {k_dims}: it must hold exactly one value (TensorRT takes a scalar K)", "error"))
    floats = _float_sources(k_name, producers, types) if k_name and k_name not in consts else []
    if floats:
        out.append(
            (
                f"K is computed from the floating-point tensor {floats[0]!r}; TensorRT parses it, but K then "
                "depends on float rounding (feed such a value as an integer input, e.g. a keep rate in 1/1000)",
                "warning",
            )
        )
    k = None
    if k_name in consts:
        k, src = int(np.asarray(consts[k_name]).reshape(-1)[0]), "K"
    elif k_name and _as_int(values.get(k_name)) is not None:
        k, src = _as_int(values[k_name]), "K (computed from the input shape)"
    else:
        shape = dims.get(node.input[0])
        axis = int(_attr(node, "axis", -1))
        if shape and shape[axis] is not None:
            k, src = int(shape[axis]), "K (bounded by the axis length)"
        elif max_k is not None:
            k, src = int(max_k), "K (bounded by the token count)"
    if k is None:
        out.append((f"cannot bound K at the largest profile shape; TensorRT needs K <= {TOPK_MAX_K}", "warning"))
    elif k < 1 and k_name in consts:
        out.append((f"K = {k}: TensorRT's TopK needs a positive K", "error"))
    elif k > INT32_MAX:
        out.append((f"{src} = {k} does not fit the INT32 scalar ITopKLayer takes (and exceeds {TOPK_MAX_K})", "error"))
    elif k > TOPK_MAX_K:
        out.append((f"{src} = {k} exceeds TensorRT's limit {TOPK_MAX_K} at the largest profile shape", "error"))
    return out


def _check_resize(node, consts, dims) -> list[tuple[str, str]]:
    """(message, severity) of a Resize: the attributes TensorRT's parser refuses."""
    out = []
    if int(_attr(node, "antialias", 0)) != 0:
        out.append(
            (
                'antialias=1 is not supported by TensorRT\'s parser ("Antialiasing is not supported currently"); '
                "vitcompress resamples position embeddings with MatMuls instead; report the model that wrote this",
                "error",
            )
        )
    kind = _attr(node, "mode", b"nearest")
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind not in ("nearest", "linear"):  # operators.md: "Supported resize modes: nearest, linear"
        out.append((f"mode={kind!r} is not supported by TensorRT's parser (nearest and linear only)", "error"))
    policy = _attr(node, "keep_aspect_ratio_policy", b"stretch")
    policy = policy.decode() if isinstance(policy, bytes) else str(policy)
    if policy != "stretch":
        out.append((f"keep_aspect_ratio_policy={policy!r} is not supported (only 'stretch')", "error"))
    mode = _attr(node, "coordinate_transformation_mode", b"half_pixel")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in _RESIZE_MODES:
        out.append((f"coordinate_transformation_mode={mode!r} is not supported by TensorRT", "error"))
    nearest = _attr(node, "nearest_mode", b"round_prefer_floor")
    nearest = nearest.decode() if isinstance(nearest, bytes) else str(nearest)
    if kind == "nearest" and nearest not in _NEAREST_MODES:
        out.append((f"nearest_mode={nearest!r} is not supported by TensorRT", "error"))
    axes = _attr(node, "axes")
    scales = node.input[2] if len(node.input) > 2 else ""
    rank = len(dims.get(node.input[0]) or []) or None
    if axes is not None and scales and scales not in consts and rank and list(axes) != list(range(rank)):
        out.append((f"axes={list(axes)} with run-time scales: TensorRT needs axes 0..{rank - 1} in order", "error"))
    return out


#: zero-point (quantized) types TensorRT's Q/DQ layers take: INT8, FLOAT8E4M3FN
_QDQ_TYPES = {3: "INT8", 17: "FLOAT8E4M3FN"}


def _check_qdq(node, consts, types) -> list[tuple[str, str]]:
    """TensorRT's rules for one QuantizeLinear/DequantizeLinear node (see the module doc)."""
    found = []
    scale = node.input[1] if len(node.input) > 1 else ""
    if scale not in consts:
        found.append(("the scale is computed at run time; TensorRT needs a constant scale", "error"))
    else:
        s = np.asarray(consts[scale], dtype=np.float64)
        if not (np.isfinite(s).all() and (s > 0).all()):
            found.append(("the scale has zero, negative or non-finite values", "error"))
    zero = node.input[2] if len(node.input) > 2 else ""
    if not zero:
        if node.op_type == "QuantizeLinear" and _attr(node, "output_dtype") in (None, 0, 2):
            found.append(("no zero point: the output is UINT8; give an INT8 or FLOAT8E4M3FN zero point of 0", "error"))
    elif zero not in consts:
        found.append(("the zero point is computed at run time; TensorRT needs a constant 0", "error"))
    elif types.get(zero) not in _QDQ_TYPES:
        kind = onnx.TensorProto.DataType.Name(types.get(zero, 0))
        found.append((f"zero point of type {kind}: TensorRT quantizes to INT8 or FLOAT8E4M3FN only", "error"))
    elif np.asarray(consts[zero]).astype(np.float32).any():
        found.append(("the zero point is not 0: TensorRT quantization is symmetric", "error"))
    return found


def _str_attr(node, name: str, default: str) -> str:
    v = _attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _given(node, index: int) -> str:
    """The name of input ``index`` of ``node``, or "" where it is absent or left out."""
    return node.input[index] if len(node.input) > index else ""


def _type_problem(what: str, elem: int, row) -> tuple[str, str] | None:
    """The finding for a tensor of ONNX element type ``elem`` where ``row`` (operators.md) applies."""
    kind = ONNX_TO_DOC.get(elem)
    if kind is None:
        return (f"{what} is {onnx.TensorProto.DataType.Name(elem)}, a type TensorRT does not have", "error")
    if kind not in row.types:
        listed = ", ".join(row.types)
        return (f"{what} is {kind}; operators.md ({DOC_VERSION}) lists {listed} for {row.op}", "error")
    return None


def _check_types(node, types) -> list[tuple[str, str]]:
    """operators.md's "Supported Types" for the node's data operands (``TYPE_INPUTS``, else the first
    input) and for the target type of a ``Cast``. Float64 has its own rule (TensorRT casts it down)."""
    row = OPERATORS[node.op_type]
    named = {_given(node, i): i for i in reversed(TYPE_INPUTS.get(node.op_type, (0,))) if _given(node, i)}
    checks = [(f"input {i}", types.get(name)) for name, i in named.items()]  # each tensor once
    if node.op_type in ("Cast", "CastLike") and _attr(node, "to") is not None:
        checks.append(("the cast target", int(_attr(node, "to"))))
    problems = (_type_problem(what, elem, row) for what, elem in checks if elem is not None and elem != _DOUBLE)
    return [p for p in problems if p is not None]


def _check_restrictions(node, consts, values, dims, types) -> list[tuple[str, str]]:
    """The restrictions operators.md states for the node's operator, where a graph shows them."""
    op, found = node.op_type, []
    if op in ("AveragePool", "MaxPool", "LpPool"):
        dil = _attr(node, "dilations")
        if dil is not None and any(int(d) != 1 for d in dil):
            found.append((f"dilations={list(dil)}: TensorRT pools without dilation", "error"))
        kernel = _attr(node, "kernel_shape")
        if op != "LpPool" and kernel is not None and len(kernel) not in (2, 3):
            found.append((f"{len(kernel)}-D pooling: TensorRT pools in 2-D or 3-D only", "error"))
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            found.append(("the Indices output is not supported", "error"))
    elif op in ("ScatterElements", "ScatterND"):
        red = _str_attr(node, "reduction", "none")
        if red != "none" and op == "ScatterND":
            found.append((f"reduction={red!r} is not supported (operators.md: reduction must be none)", "error"))
        elif red != "none":
            found.append(
                (
                    f"reduction={red!r} is imported through TensorRT's ScatterElements plugin, and vitcompress's "
                    "engine build loads no plugin library",
                    "error",
                )
            )
    elif op == "Dropout" and _given(node, 2):
        flag = consts.get(_given(node, 2))
        if flag is None or bool(np.asarray(flag).reshape(-1)[0]):
            found.append(("is_training must be a constant False", "error"))
    elif op == "LayerNormalization" and any(node.output[1:]):
        found.append(("only the first output (Y) is supported, not Mean or InvStdDev", "error"))
    elif op in ("CumSum", "OneHot") and _given(node, 1) and _given(node, 1) not in consts:
        what = "axis" if op == "CumSum" else "depth"
        if _as_int(values.get(_given(node, 1))) is None:
            found.append((f"{what} must be a build-time constant", "error"))
    elif op.startswith("Reduce") and _given(node, 1) and _given(node, 1) not in consts:
        found.append(("axes must be an initializer", "error"))
    elif op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        found.append(("sparse and string constants are not supported", "error"))
    elif op == "LSTM" and (int(_attr(node, "input_forget", 0)) != 0 or int(_attr(node, "layout", 0)) != 0):
        found.append(("input_forget and layout must be 0", "error"))
    elif op == "STFT" and any(_given(node, i) and _given(node, i) not in consts for i in (1, 2)):
        found.append(("frame_step and window must be initializers", "error"))
    elif op == "GridSample" and dims.get(node.input[0]) is not None and len(dims[node.input[0]]) != 4:
        found.append((f"{len(dims[node.input[0]])}-D input: TensorRT's GridSample takes 4-D input", "error"))
    elif op == "TensorScatter" and int(_attr(node, "axis", -2)) != -2:
        found.append(("axis must be -2", "error"))
    elif op == "RotaryEmbedding" and _given(node, 3) and types.get(_given(node, 3), _INT64) != _INT64:
        found.append(("position_ids must be INT64", "error"))
    elif op == "Attention":
        found.append(("the Attention operator is parsed only by TensorRT >= 10.14", "warning"))
        if any(_given(node, i) for i in (4, 5, 6)):
            found.append(("past_key, past_value and nonpad_kv_seqlen inputs are not supported", "error"))
        if any(node.output[1:]):
            found.append(("present_key, present_value and qk_matmul_output outputs are not supported", "error"))
        if int(_attr(node, "qk_matmul_output_mode", 0)) != 0 or float(_attr(node, "softcap", 0.0)) != 0.0:
            found.append(("qk_matmul_output_mode and softcap are not supported", "error"))
    return found


def check_tensorrt(
    model_or_path,
    max_input_shapes: dict[str, Sequence[int]] | None = None,
    input_values: dict[str, Sequence[float]] | None = None,
    max_k: int | None = None,
) -> CompatReport:
    """Check an ONNX file or ``ModelProto`` against TensorRT's parser limits (see module doc).

    ``max_input_shapes`` maps input names to their largest profile shape (used to bound TopK's
    K); without it the graph's static input dims are used where known. ``input_values`` maps
    inputs that feed shape arithmetic to the values that make it largest (a runtime-keep graph:
    ``{"keep_permille": [1000]}``, see ``input_max_values``); they are treated as constants.
    ``max_k`` is a bound on every ``K`` that the caller knows (``token_bound``: no token count of a
    token-reduced ViT exceeds its patch count plus one per block); it bounds a ``K`` whose value and
    axis length shape inference cannot evaluate (``K`` after a data-dependent token count).
    """
    model = (
        model_or_path
        if isinstance(model_or_path, onnx.ModelProto)
        else onnx.load(str(model_or_path), load_external_data=False)
    )
    inferred, values = _max_shape_model(model, max_input_shapes or {}, input_values)
    consts = _constants(inferred)
    dims = _dims(inferred)
    types = _types(inferred)
    producers = {o: n for n in _walk(inferred.graph) for o in n.output}
    report = CompatReport()
    for i, node in enumerate(_walk(inferred.graph)):
        report.nodes += 1
        name = node.name or f"#{i}"
        op = node.op_type
        row = OPERATORS.get(op)
        if node.domain not in ("", "ai.onnx"):
            found = [(f"custom-domain operator ({node.domain}) needs a TensorRT plugin", "error")]
        elif row is None:
            why = f"not listed in onnx-tensorrt's operators.md, {DOC_VERSION}"
            found = [(f"operator is not supported by TensorRT's ONNX parser ({why})", "error")]
        elif not row.supported:
            why = f"marked N in onnx-tensorrt's operators.md, {DOC_VERSION}" + (f": {row.notes}" if row.notes else "")
            found = [(f"operator is not supported by TensorRT's ONNX parser ({why})", "error")]
        else:
            found = _check_types(node, types) + _check_restrictions(node, consts, values, dims, types)
            if op == "TopK":
                found += _check_topk(node, consts, values, dims, max_k, producers, types)
            elif op == "Resize":
                found += _check_resize(node, consts, dims)
            elif op == "Cast" and _attr(node, "to") == _DOUBLE:
                found += [("cast to float64: TensorRT has no FP64", "error")]
            elif op in ("QuantizeLinear", "DequantizeLinear"):
                found += _check_qdq(node, consts, types)
        report.issues.extend(CompatIssue(name, op, msg, sev) for msg, sev in found)
    for t in model.graph.initializer:
        if t.data_type == _DOUBLE:
            report.issues.append(CompatIssue(t.name, "initializer", "float64 weights: TensorRT has no FP64"))
    return report


def input_max_shapes(path: str | os.PathLike, batch_max: int, img_max: int | None) -> dict:
    """Largest profile shape of the image input (the first input) of an exported file."""
    model = onnx.load(str(path), load_external_data=False)
    inp = model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    shape[0] = batch_max
    if img_max is not None:
        shape[2] = shape[3] = img_max
    return {inp.name: shape}


def token_bound(path: str | os.PathLike, max_input_shapes: dict) -> int | None:
    """For a token-reduced vitcompress export: patch tokens at the largest profile image plus one per
    block (EViT's fused token), a bound on every token count and so on every TopK ``K``; else None.
    Read from the file's ``vitcompress.*`` metadata (patch size, blocks, token schedule)."""
    model = onnx.load(str(path), load_external_data=False)
    md = {p.key: p.value for p in model.metadata_props}
    try:
        export = json.loads(md["vitcompress.export"])
        tokens = json.loads(md["vitcompress.tokens"])
        depth = len(json.loads(md["vitcompress.spec"])["blocks"])
        patch = int(export["patch_size"])
    except (KeyError, TypeError, ValueError):
        return None
    shape = max_input_shapes.get(model.graph.input[0].name)
    if not tokens or not shape or shape[2] is None or shape[3] is None:
        return None
    return (int(shape[2]) // patch) * (int(shape[3]) // patch) + depth


def input_max_values(path: str | os.PathLike) -> dict:
    """Values of the non-image inputs that make every token count largest: ``keep_permille = 1000``
    for a runtime-keep export (``exporters.runtime_keep``); empty for other files."""
    model = onnx.load(str(path), load_external_data=False)
    return {KEEP_INPUT: [1000]} if any(i.name == KEEP_INPUT for i in model.graph.input) else {}
