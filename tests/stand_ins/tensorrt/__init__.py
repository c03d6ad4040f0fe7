"""A scripted stand-in for the ``tensorrt`` Python package (TensorRT 10 or 11), for tests on CPU.

It implements the part of the TensorRT Python API that vitcompress calls, with the names, argument
types, argument order and return conventions of the real bindings (``python/src/infer/pyCore.cpp``
and ``pyOnnx.cpp`` of NVIDIA/TensorRT 10.16 and 11.1), and it refuses what the real library
refuses:

* TensorRT 10: ``BuilderFlag.FP16`` exists; ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is
  deprecated and ignored; ``STRONGLY_TYPED`` together with ``BuilderFlag.FP16`` fails the build.
  TensorRT 11: no precision builder flags (``BuilderFlag.FP16`` does not exist), no
  ``EXPLICIT_BATCH``; ``STRONGLY_TYPED`` is deprecated (networks are always strongly typed).
* the ONNX parser: ``Resize`` with ``antialias=1`` ("Antialiasing is not supported currently") is a
  parse error. (A ``TopK`` ``K`` computed from a float is not: TensorRT parses it; the lint warns.
  Nor is an INT64 ``K``: the parser reshapes it to a scalar and keeps its type; ``ITopKLayer``'s
  Int32 ``K`` is TensorRT's business at build time, which the stand-in does not imitate.)
* shape-tensor inputs are decided by use, as TensorRT does: an INT32/INT64 input of rank <= 1 whose
  value reaches a shape operand (``SHAPE_SLOTS``: TopK's K, Reshape's shape, ...).
* building: every dynamic input needs ``set_shape`` and every shape-tensor input ``set_shape_input``
  (as many values as the input has elements) in the optimisation profile, with ``min <= opt <= max``;
  otherwise the build returns ``None``.
* timing cache: ``set_timing_cache`` returns ``False`` for a cache of another TensorRT version or
  device (``ignore_mismatch=False``); ``get_timing_cache`` returns ``None`` when none was set.
* running, in the order NvInferRuntime.h documents: ``set_input_shape`` (``False`` outside the
  profile) and the host address of every shape-inference input (``is_shape_inference_io``) before
  ``infer_shapes`` (the names still missing) or an output's ``get_tensor_shape`` (all ``-1`` and an
  error in the log until then); ``execute_async_v3`` needs every input shape and every address set;
  the default stream (handle 0) logs TensorRT's warning; an engine serialised by another version does
  not deserialise (``None`` and an error in the log).

The "engine" is the ONNX model itself: ``execute_async_v3`` reads the inputs from the bound
addresses (host memory: torch CPU tensors stand in for device buffers), runs the graph in ONNX
Runtime and writes the outputs to their addresses, so results are real. Every API call is recorded
in ``CALLS`` as ``(name, args)``.

The version is chosen when the module is imported: ``VITCOMPRESS_TRT_STAND_IN=10.16.1`` (default)
or ``11.1.0``; tests import it afresh for each version.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import os
import sys

import numpy as np

__version__ = os.environ.get("VITCOMPRESS_TRT_STAND_IN", "10.16.1")
MAJOR = int(__version__.split(".")[0])
if MAJOR not in (10, 11):
    raise ImportError(f"the tensorrt stand-in imitates TensorRT 10 and 11, not {__version__}")

#: Every call into the API: (name, args).
CALLS: list[tuple[str, tuple]] = []
MAGIC = b"vitcompress-trt-stand-in\n"


def _record(name: str, *args) -> None:
    CALLS.append((name, args))


def _expect(value, types, fn: str, arg: str) -> None:
    """pybind11's refusal of a wrong argument type."""
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise TypeError(f"{fn}(): incompatible function arguments: {arg} must be {types}, got {type(value).__name__}")


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


# ------------------------------------------------------------------------------------------ enums
class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.Enum):
    DEVICE = 0
    HOST = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


# the values of NvInfer.h's ``BuilderFlag`` (kFP16 = 0, kINT8 = 1, ...; TensorRT 11 removed the precision flags)
_flags = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7}
if MAJOR == 10:
    _flags.update({"FP16": 0, "INT8": 1, "FP8": 15, "BF16": 17})
BuilderFlag = enum.IntEnum("BuilderFlag", _flags)
NetworkDefinitionCreationFlag = enum.IntEnum(
    "NetworkDefinitionCreationFlag",
    {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if MAJOR == 10 else {"STRONGLY_TYPED": 1},
)

# ONNX element type -> DataType, numpy dtype
_ONNX_TYPES = {
    1: (DataType.FLOAT, np.float32),
    10: (DataType.HALF, np.float16),
    6: (DataType.INT32, np.int32),
    7: (DataType.INT64, np.int64),
    9: (DataType.BOOL, np.bool_),
    2: (DataType.UINT8, np.uint8),
    3: (DataType.INT8, np.int8),
}
_NUMPY = {dt: np_type for dt, np_type in _ONNX_TYPES.values()}
_FLOAT_ONNX = {1, 10, 11, 16}


class Dims(tuple):
    """``trt.Dims``: a sequence of ints, -1 on a dynamic axis."""


# ----------------------------------------------------------------------------------------- logger
class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity


class Logger(ILogger):
    def __init__(self, min_severity=ILogger.WARNING):
        _expect(min_severity, ILogger.Severity, "Logger.__init__", "min_severity")
        _record("Logger", min_severity)
        self.min_severity = min_severity
        self.messages: list[tuple[ILogger.Severity, str]] = []

    def log(self, severity, msg: str) -> None:
        self.messages.append((severity, msg))
        if severity <= self.min_severity:
            print(f"[TRT stand-in] [{severity.name[0]}] {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------------------- memory
class IHostMemory:
    """Serialised data (an engine, a timing cache); ``bytes(mem)`` copies it."""

    def __init__(self, data: bytes):
        self._data = bytes(data)
        self.nbytes = len(self._data)
        self.dtype = DataType.UINT8

    def __bytes__(self) -> bytes:
        return self._data

    def __len__(self) -> int:
        return self.nbytes


def _buffer(value, fn: str) -> bytes:
    """A py::buffer argument (bytes, bytearray, memoryview, IHostMemory)."""
    if isinstance(value, IHostMemory):
        return bytes(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"{fn}(): incompatible function arguments: a buffer is required, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------- network
class ITensor:
    def __init__(self, name: str, dtype: DataType, shape: Dims, onnx_type: int):
        self.name, self.dtype, self.shape, self.onnx_type = name, dtype, shape, onnx_type
        self.is_shape_tensor = False


class INetworkDefinition:
    def __init__(self, flags: int):
        self.flags = flags
        self.strongly_typed = MAJOR >= 11 or bool(flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED.value))
        self.inputs: list[ITensor] = []
        self.outputs: list[ITensor] = []
        self.onnx: bytes | None = None
        self.parsed = False
        self.qdq_types: set = set()

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> ITensor:
        _expect(index, int, "INetworkDefinition.get_input", "index")
        return self.inputs[index]

    def get_output(self, index: int) -> ITensor:
        _expect(index, int, "INetworkDefinition.get_output", "index")
        return self.outputs[index]


class IParserError:
    def __init__(self, node_name: str, op: str, desc: str):
        self._node, self._op, self._desc = node_name, op, desc

    def desc(self) -> str:
        return self._desc

    def node_name(self) -> str:
        return self._node

    def node_operator(self) -> str:
        return self._op

    def __str__(self) -> str:
        return f"In node ({self._node}) [{self._op}]: {self._desc}"


def _tensor_dims(vi) -> Dims:
    return Dims(d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim)


#: operator inputs TensorRT takes as shape tensors (by position): an INT32/INT64 network input that
#: reaches one of them through integer arithmetic is a shape-tensor input (TensorRT decides by use)
SHAPE_SLOTS = {
    "TopK": (1,),
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Range": (0, 1, 2),
    "Slice": (1, 2, 3, 4),
    "Resize": (3,),
    "Unsqueeze": (1,),
    "Squeeze": (1,),
}


def _shape_inputs(model) -> set[str]:
    """The graph inputs whose values reach a shape slot (``SHAPE_SLOTS``): TensorRT's shape-tensor inputs."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for pos, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, pos))
    found = set()
    for vi in model.graph.input:
        todo, seen = [vi.name], set()
        while todo:
            t = todo.pop()
            if t in seen:
                continue
            seen.add(t)
            for node, pos in consumers.get(t, ()):
                if pos in SHAPE_SLOTS.get(node.op_type, ()):
                    found.add(vi.name)
                elif node.op_type != "Shape":
                    todo.extend(node.output)
    return found


def _qdq_problem(model, node) -> str | None:
    """What TensorRT's parser says of a Q/DQ node it cannot import (explicit quantization: constant
    scale, zero point a constant 0 of type INT8 or FLOAT8E4M3FN), or None."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == 4:
            consts[n.output[0]] = n.attribute[0].t
    if len(node.input) < 2 or node.input[1] not in consts:
        return "Assertion failed: the scale must be an initializer (constant)."
    if len(node.input) < 3 or not node.input[2]:
        return "Assertion failed: UINT8 quantization is not supported; give an INT8 or FP8 zero point."
    zp = consts.get(node.input[2])
    if zp is None:
        return "Assertion failed: the zero point must be an initializer (constant)."
    if zp.data_type not in (3, 17):  # INT8, FLOAT8E4M3FN
        return f"Assertion failed: unsupported quantization type {zp.data_type} (INT8 and FP8 E4M3 are supported)."
    if np.asarray(numpy_helper.to_array(zp)).astype(np.float32).any():
        return "Assertion failed: TensorRT only supports symmetric quantization: the zero point must be 0."
    return None


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        _expect(network, INetworkDefinition, "OnnxParser.__init__", "network")
        _expect(logger, ILogger, "OnnxParser.__init__", "logger")
        _record("OnnxParser", network, logger)
        self.network, self.logger = network, logger
        self.errors: list[IParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> IParserError:
        _expect(index, int, "OnnxParser.get_error", "index")
        return self.errors[index]

    def parse_from_file(self, model: str) -> bool:
        _expect(model, str, "OnnxParser.parse_from_file", "model")
        _record("OnnxParser.parse_from_file", model)
        import onnx

        proto = onnx.load(model)  # external data resolved next to the file, as the real parser does
        return self._parse(proto)

    def parse(self, model, path: str | None = None) -> bool:
        _record("OnnxParser.parse", path)
        import onnx

        return self._parse(onnx.load_from_string(_buffer(model, "OnnxParser.parse")))

    def _parse(self, proto) -> bool:
        for node in proto.graph.node:
            attrs = {a.name: a for a in node.attribute}
            if node.op_type == "Resize" and "antialias" in attrs and attrs["antialias"].i != 0:
                self.errors.append(IParserError(node.name, "Resize", "Antialiasing is not supported currently."))
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                problem = _qdq_problem(proto, node)
                if problem:
                    self.errors.append(IParserError(node.name, node.op_type, problem))
        if self.errors:
            return False
        initializers = {t.name for t in proto.graph.initializer}
        shape_inputs = _shape_inputs(proto)
        net = self.network
        for vi in proto.graph.input:
            if vi.name in initializers:
                continue
            elem = vi.type.tensor_type.elem_type
            t = ITensor(vi.name, _ONNX_TYPES[elem][0], _tensor_dims(vi), elem)
            t.is_shape_tensor = elem in (6, 7) and len(t.shape) <= 1 and vi.name in shape_inputs
            net.inputs.append(t)
        for vi in proto.graph.output:
            elem = vi.type.tensor_type.elem_type
            t = ITensor(vi.name, _ONNX_TYPES[elem][0], _tensor_dims(vi), elem)
            t.dim_params = [d.dim_param for d in vi.type.tensor_type.shape.dim]
            net.outputs.append(t)
        net.input_dim_params = {
            vi.name: [d.dim_param for d in vi.type.tensor_type.shape.dim] for vi in proto.graph.input
        }
        zero_types = {t.name: t.data_type for t in proto.graph.initializer}
        net.qdq_types = {zero_types.get(n.input[2]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}
        net.onnx = proto.SerializeToString()
        net.parsed = True
        return True


# ---------------------------------------------------------------------------------------- builder
class IOptimizationProfile:
    def __init__(self):
        self.shapes: dict[str, tuple[Dims, Dims, Dims]] = {}
        self.values: dict[str, tuple[list, list, list]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the binding's argument names
        _expect(input, str, "IOptimizationProfile.set_shape", "input")
        dims = []
        for what, d in (("min", min), ("opt", opt), ("max", max)):
            _expect(d, (tuple, list, Dims), "IOptimizationProfile.set_shape", what)
            for v in d:
                _expect(v, (int, np.integer), "IOptimizationProfile.set_shape", what)
            dims.append(Dims(int(v) for v in d))
        _record("IOptimizationProfile.set_shape", input, *dims)
        lo, mid, hi = dims
        if not len(lo) == len(mid) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, mid, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[input] = (lo, mid, hi)

    def set_shape_input(self, input: str, min, opt, max) -> None:  # noqa: A002
        _expect(input, str, "IOptimizationProfile.set_shape_input", "input")
        vals = []
        for what, d in (("min", min), ("opt", opt), ("max", max)):
            _expect(d, (tuple, list), "IOptimizationProfile.set_shape_input", what)
            for v in d:
                _expect(v, (int, np.integer), "IOptimizationProfile.set_shape_input", what)
            vals.append([int(v) for v in d])
        _record("IOptimizationProfile.set_shape_input", input, *vals)
        if any(not a <= b <= c for a, b, c in zip(*vals)):
            raise RuntimeError("min input provided for shape tensor is inconsistent with other inputs.")
        self.values[input] = tuple(vals)

    def get_shape(self, input: str):  # noqa: A002
        return list(self.shapes.get(input, ()))


#: the device a timing cache belongs to (tests change it to imitate a cache from another GPU)
DEVICE = "stand-in GPU"


class ITimingCache:
    def __init__(self, entries: list[str], owner: str):
        self.entries = list(entries)
        self.owner = owner

    def serialize(self) -> IHostMemory:
        _record("ITimingCache.serialize")
        head = json.dumps({"owner": self.owner, "entries": self.entries}).encode()
        return IHostMemory(b"stand-in timing cache\n" + head)


def _owner() -> str:
    return f"{__version__} on {DEVICE}"


def _cache(data: bytes) -> ITimingCache | None:
    if not data:
        return ITimingCache([], _owner())
    head = b"stand-in timing cache\n"
    if not data.startswith(head):
        return None
    d = json.loads(data[len(head) :])
    return ITimingCache(d["entries"], d["owner"])


class IBuilderConfig:
    def __init__(self):
        self.pools: dict[MemoryPoolType, int] = {}
        self.flags: set = set()
        self._opt_level = 3
        self.profiles: list[IOptimizationProfile] = []
        self.cache: ITimingCache | None = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        _expect(pool, MemoryPoolType, "IBuilderConfig.set_memory_pool_limit", "pool")
        _expect(pool_size, int, "IBuilderConfig.set_memory_pool_limit", "pool_size")
        _record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)
        if pool_size < 0:
            raise ValueError("pool_size must be >= 0")
        self.pools[pool] = pool_size

    def set_flag(self, flag) -> None:
        _expect(flag, BuilderFlag, "IBuilderConfig.set_flag", "flag")
        _record("IBuilderConfig.set_flag", flag)
        self.flags.add(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    @property
    def builder_optimization_level(self) -> int:
        return self._opt_level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        _expect(level, int, "IBuilderConfig.builder_optimization_level", "level")
        _record("IBuilderConfig.builder_optimization_level", level)
        if not 0 <= level <= 5:
            raise ValueError("builder optimization level must be in 0..5")
        self._opt_level = level

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache | None:
        data = _buffer(serialized_timing_cache, "IBuilderConfig.create_timing_cache")
        _record("IBuilderConfig.create_timing_cache", len(data))
        return _cache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        _expect(cache, ITimingCache, "IBuilderConfig.set_timing_cache", "cache")
        _expect(ignore_mismatch, bool, "IBuilderConfig.set_timing_cache", "ignore_mismatch")
        _record("IBuilderConfig.set_timing_cache", cache, ignore_mismatch)
        if cache.owner != _owner() and not ignore_mismatch:
            return False  # a cache of another TensorRT version or device: refused, the config keeps none
        self.cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        _record("IBuilderConfig.get_timing_cache")
        return self.cache

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        _expect(profile, IOptimizationProfile, "IBuilderConfig.add_optimization_profile", "profile")
        _record("IBuilderConfig.add_optimization_profile", profile)
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: ILogger):
        _expect(logger, ILogger, "Builder.__init__", "logger")
        _record("Builder", logger)
        self.logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        _expect(flags, int, "Builder.create_network", "flags")
        _record("Builder.create_network", flags)
        if MAJOR == 10 and flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH.value):
            self.logger.log(ILogger.WARNING, "kEXPLICIT_BATCH is deprecated and has no effect")
        if MAJOR >= 11 and flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED.value):
            self.logger.log(ILogger.WARNING, "kSTRONGLY_TYPED is deprecated: networks are always strongly typed")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        _record("Builder.create_builder_config")
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        _record("Builder.create_optimization_profile")
        return IOptimizationProfile()

    def _fail(self, msg: str) -> None:
        self.logger.log(ILogger.ERROR, msg)

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        _expect(network, INetworkDefinition, "Builder.build_serialized_network", "network")
        _expect(config, IBuilderConfig, "Builder.build_serialized_network", "config")
        _record("Builder.build_serialized_network", network, config)
        if not network.parsed:
            return self._fail("network has no layers (nothing was parsed)")
        fp16 = MAJOR == 10 and BuilderFlag.FP16 in config.flags
        if fp16 and network.strongly_typed:
            return self._fail("BuilderFlag::kFP16 is not allowed with a strongly typed network")
        if MAJOR == 10 and not network.strongly_typed:  # explicit quantization needs each type's flag
            for kind, flag in ((3, "INT8"), (17, "FP8")):
                if kind in network.qdq_types and BuilderFlag[flag] not in config.flags:
                    return self._fail(f"network has {flag} Q/DQ layers but BuilderFlag::k{flag} is not set")
        if not config.profiles:
            if any(-1 in t.shape for t in network.inputs) or any(t.is_shape_tensor for t in network.inputs):
                return self._fail("network has dynamic or shape inputs, but no optimization profile has been defined")
        profile = config.profiles[0] if config.profiles else IOptimizationProfile()
        io = []
        for t in network.inputs:
            entry = {
                "name": t.name,
                "mode": "INPUT",
                "dtype": t.dtype.name,
                "shape": list(t.shape),
                "onnx": t.onnx_type,
            }
            entry["dim_params"] = network.input_dim_params[t.name]
            if t.is_shape_tensor:
                if t.name not in profile.values:
                    return self._fail(f"{t.name}: shape tensor input has no values in the optimization profile")
                count = int(np.prod([d for d in t.shape])) if len(t.shape) else 1
                if any(len(v) != count for v in profile.values[t.name]):
                    return self._fail(
                        f"{t.name}: the optimization profile gives {len(profile.values[t.name][0])} values for a "
                        f"shape tensor of {count} element(s)"
                    )
                entry["values"] = profile.values[t.name]
                entry["location"] = "HOST"
            else:
                if t.name not in profile.shapes and -1 in t.shape:
                    return self._fail(f"{t.name}: dynamic input is missing dimensions in profile 0")
                lo, mid, hi = profile.shapes.get(t.name, (t.shape, t.shape, t.shape))
                for d, a, c in zip(t.shape, lo, hi):
                    if len(lo) != len(t.shape) or (d != -1 and not a == c == d):
                        return self._fail(f"{t.name}: profile {list(lo)}..{list(hi)} does not match {list(t.shape)}")
                entry["profile"] = [list(lo), list(mid), list(hi)]
                entry["location"] = "DEVICE"
            io.append(entry)
        for t in network.outputs:
            dtype = t.dtype.name
            io.append(
                {
                    "name": t.name,
                    "mode": "OUTPUT",
                    "dtype": dtype,
                    "shape": list(t.shape),
                    "location": "DEVICE",
                    "dim_params": t.dim_params,
                    "onnx": t.onnx_type,
                }
            )
        header = {
            "version": __version__,
            "io": io,
            "fp16": fp16,
            "strongly_typed": network.strongly_typed,
            "opt_level": config.builder_optimization_level,
            "workspace": config.pools.get(MemoryPoolType.WORKSPACE),
        }
        if config.cache is not None:
            config.cache.entries.append(hashlib.sha1(network.onnx + json.dumps(io).encode()).hexdigest()[:16])
        head = json.dumps(header).encode()
        return IHostMemory(MAGIC + len(head).to_bytes(8, "little") + head + network.onnx)


# ---------------------------------------------------------------------------------------- runtime
class Runtime:
    def __init__(self, logger: ILogger):
        _expect(logger, ILogger, "Runtime.__init__", "logger")
        _record("Runtime", logger)
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = _buffer(serialized_engine, "Runtime.deserialize_cuda_engine")
        _record("Runtime.deserialize_cuda_engine", len(data))
        if not data.startswith(MAGIC):
            self.logger.log(ILogger.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed.")
            return None
        n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
        start = len(MAGIC) + 8
        header = json.loads(data[start : start + n])
        if header["version"] != __version__:
            self.logger.log(
                ILogger.ERROR,
                "The engine plan file is not compatible with this version of TensorRT, expecting library "
                f"version {__version__} got {header['version']}, please rebuild.",
            )
            return None
        return ICudaEngine(header, data[start + n :], self.logger)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, logger: ILogger):
        self.header, self.onnx_bytes, self.logger = header, onnx_bytes, logger
        self.io = {e["name"]: e for e in header["io"]}
        self.names = [e["name"] for e in header["io"]]
        self.num_optimization_profiles = 1

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def _tensor(self, name: str, fn: str) -> dict:
        _expect(name, str, fn, "name")
        return self.io.get(name)

    def get_tensor_name(self, index: int) -> str:
        _expect(index, int, "ICudaEngine.get_tensor_name", "index")
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        t = self._tensor(name, "ICudaEngine.get_tensor_mode")
        return TensorIOMode.NONE if t is None else TensorIOMode[t["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self._tensor(name, "ICudaEngine.get_tensor_dtype")["dtype"]]

    def get_tensor_shape(self, name: str) -> Dims:
        t = self._tensor(name, "ICudaEngine.get_tensor_shape")
        return Dims([-1]) if t is None else Dims(t["shape"])

    def get_tensor_location(self, name: str) -> TensorLocation:
        return TensorLocation[self._tensor(name, "ICudaEngine.get_tensor_location")["location"]]

    def is_shape_inference_io(self, name: str) -> bool:
        t = self._tensor(name, "ICudaEngine.is_shape_inference_io")
        return t is not None and "values" in t

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        t = self._tensor(name, "ICudaEngine.get_tensor_profile_shape")
        _expect(profile_index, int, "ICudaEngine.get_tensor_profile_shape", "profile_index")
        _record("ICudaEngine.get_tensor_profile_shape", name, profile_index)
        if t is None or t["mode"] != "INPUT" or profile_index != 0:
            raise RuntimeError("Invalid tensor name or profile index")
        if "values" in t:
            return [Dims(t["shape"])] * 3
        return [Dims(d) for d in t["profile"]]

    def get_tensor_profile_values(self, name, profile_index):
        # the real binding's C++ order is (profile_index, name) whatever the keyword names say
        profile_index, name = name, profile_index
        _expect(profile_index, int, "ICudaEngine.get_tensor_profile_values", "profile_index")
        t = self._tensor(name, "ICudaEngine.get_tensor_profile_values")
        if t is None or "values" not in t:
            raise RuntimeError("Binding index does not correspond to an input shape tensor.")
        return [list(v) for v in t["values"]]

    def create_execution_context(self) -> IExecutionContext:
        _record("ICudaEngine.create_execution_context")
        return IExecutionContext(self)


def _read(address: int, dtype, shape) -> np.ndarray:
    """``shape`` elements of ``dtype`` at a memory address (a copy)."""
    count = int(np.prod(shape)) if len(shape) else 1
    size = count * np.dtype(dtype).itemsize
    raw = ctypes.string_at(address, size)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.shapes: dict[str, Dims] = {}
        self.addresses: dict[str, int] = {}
        self._session = None

    def set_input_shape(self, name: str, shape) -> bool:
        _expect(name, str, "IExecutionContext.set_input_shape", "name")
        _expect(shape, (tuple, list, Dims), "IExecutionContext.set_input_shape", "shape")
        for v in shape:
            _expect(v, (int, np.integer), "IExecutionContext.set_input_shape", "shape")
        shape = Dims(int(v) for v in shape)
        _record("IExecutionContext.set_input_shape", name, shape)
        t = self.engine.io.get(name)
        if t is None or t["mode"] != "INPUT" or len(shape) != len(t["shape"]):
            return False
        if any(d != -1 and d != s for d, s in zip(t["shape"], shape)):
            return False
        if "profile" in t:
            lo, _, hi = t["profile"]
            if any(not a <= s <= c for a, s, c in zip(lo, shape, hi)):
                self.engine.logger.log(
                    ILogger.ERROR,
                    f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Supplied binding dimension "
                    f"{list(shape)} for {name} is outside the profile range [{lo}, {hi}])",
                )
                return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> Dims:
        _expect(name, str, "IExecutionContext.get_tensor_shape", "name")
        _record("IExecutionContext.get_tensor_shape", name)
        return self._shape(name)

    def _shape(self, name: str) -> Dims:
        t = self.engine.io.get(name)
        if t is None:
            return Dims([-1])
        if t["mode"] == "INPUT":
            return self.shapes.get(name, Dims(t["shape"]))
        missing = self._missing()
        if missing:
            self.engine.logger.log(
                ILogger.ERROR,
                f"IExecutionContext::getTensorShape: Error Code 3: API Usage Error (the shapes of {missing} and "
                "the values of every shape-inference input must be set before an output's shape is read)",
            )
            return Dims([-1] * len(t["shape"]))
        known = {}
        for inp, shape in self.shapes.items():
            for param, d in zip(self.engine.io[inp]["dim_params"], shape):
                if param:
                    known[param] = d
        return Dims(d if d != -1 else known.get(p, -1) for d, p in zip(t["shape"], t["dim_params"]))

    def _missing(self) -> list[str]:
        """Inputs whose shape (dynamic) or, for shape-inference inputs, host address is not set yet."""
        out = []
        for name, t in self.engine.io.items():
            if t["mode"] != "INPUT":
                continue
            if "values" in t:
                if not self.addresses.get(name):
                    out.append(name)
            elif -1 in t["shape"] and name not in self.shapes:
                out.append(name)
        return out

    def infer_shapes(self) -> list[str]:
        """The names of the inputs still insufficiently specified (empty: every output shape is known)."""
        _record("IExecutionContext.infer_shapes")
        return self._missing()

    def set_tensor_address(self, name: str, memory: int) -> bool:
        _expect(name, str, "IExecutionContext.set_tensor_address", "name")
        _expect(memory, int, "IExecutionContext.set_tensor_address", "memory")
        _record("IExecutionContext.set_tensor_address", name, memory)
        if name not in self.engine.io:
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        _expect(stream_handle, int, "IExecutionContext.execute_async_v3", "stream_handle")
        _record("IExecutionContext.execute_async_v3", stream_handle)
        log = self.engine.logger.log
        if stream_handle == 0:
            log(
                ILogger.WARNING,
                "Using default stream in enqueueV3() may lead to performance issues due to additional calls to "
                "cudaStreamSynchronize() by TensorRT to ensure correct synchronization. Please use non-default "
                "stream instead.",
            )
        feeds = {}
        for name, t in self.engine.io.items():
            if name not in self.addresses or not self.addresses[name]:
                log(
                    ILogger.ERROR,
                    f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error ({name}: address not set)",
                )
                return False
            if t["mode"] != "INPUT":
                continue
            shape = self.shapes.get(name, Dims(t["shape"]))
            if -1 in shape:
                log(
                    ILogger.ERROR,
                    f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error ({name}: shape not set)",
                )
                return False
            value = _read(self.addresses[name], _NUMPY[DataType[t["dtype"]]], tuple(shape))
            if "values" in t:
                lo, _, hi = t["values"]
                if any(not a <= v <= c for a, v, c in zip(lo, value.reshape(-1), hi)):
                    log(ILogger.ERROR, f"{name}: shape tensor value {value.tolist()} is outside the profile {lo}..{hi}")
                    return False
            feeds[name] = value
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            self._session = ort.InferenceSession(self.engine.onnx_bytes, opts, providers=["CPUExecutionProvider"])
        outs = self._session.run(None, feeds)
        for (name, t), out in zip([(n, t) for n, t in self.engine.io.items() if t["mode"] == "OUTPUT"], outs):
            expected = tuple(self._shape(name))
            if tuple(out.shape) != expected:
                log(ILogger.ERROR, f"{name}: output shape {out.shape} differs from the resolved shape {expected}")
                return False
            data = np.ascontiguousarray(out, dtype=_NUMPY[DataType[t["dtype"]]])
            ctypes.memmove(self.addresses[name], data.ctypes.data, data.nbytes)
        return True
