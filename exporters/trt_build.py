"""TensorRT engine building from an exported ONNX file, with a JSON sidecar.

TensorRT 10: a weakly typed network; fp16 is the ``BuilderFlag.FP16`` flag (fed the fp32 or fp16
ONNX). TensorRT 11 removed the precision flags and ``EXPLICIT_BATCH``, and every network is strongly
typed (``STRONGLY_TYPED`` is deprecated and not passed): an fp16 engine is built from the fp16 ONNX
(``export --precision fp16``) and the tensor types of the file decide.

One optimisation profile covers ``batch`` MIN:OPT:MAX and, for a dynamic-size export, ``img_size``
MIN:OPT:MAX (``set_shape``); a runtime-keep export's ``keep_permille`` is a shape-tensor input whose
values the profile bounds (``set_shape_input``, ``keep_permille`` MIN:OPT:MAX, default 1, the
schedule's own rate, 1000). The timing cache file is read if present and written back after the
build, so repeated builds on the same GPU skip most kernel timing.

A token-reduced graph's ``TopK`` takes its ``K`` as ONNX defines it, a one-element INT64 tensor
(shape-derived, or computed from ``keep_permille``). TensorRT's ONNX parser reshapes it to a scalar
and hands it to ``ITopKLayer`` without a cast, whose header documents an Int32 scalar; the
compatibility check (``trt_check``) keeps ``K`` an INT64 scalar in ``[1, 3840]``, well inside INT32.
That the build accepts the INT64 scalar (or converts it) is confirmed only on a real TensorRT.

The sidecar (``<engine>.json``) records what the engine needs at load time: the TensorRT version and
the GPU's compute capability (an engine only loads under the same TensorRT on the same GPU
architecture; ``trt_runner.TrtEngine`` compares both first), the profile, the precision.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
import torch

from vitcompress.config import check_fields, field_range, in_range, range_text, setting
from vitcompress.errors import VitCompressError
from vitcompress.io import atomic_file

from .precision import EXPORT_PRECISIONS
from .profiles import Profile, ProfileLike, parse_profile
from .runtime_keep import KEEP_INPUT

INSTALL_HINT = (
    "TensorRT is not installed; install it with `pip install 'vitcompress[gpu]'` on a machine "
    "with an NVIDIA GPU (the ONNX file was written)"
)
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package imports and has a builder."""
    try:
        import tensorrt as trt
    except Exception:
        return False
    return hasattr(trt, "Builder")


def require_tensorrt():
    """The ``tensorrt`` module, or a ``VitCompressError`` that says how to install it."""
    try:
        import tensorrt as trt
    except Exception:
        raise VitCompressError(INSTALL_HINT, params=[]) from None
    if not hasattr(trt, "Builder"):
        raise VitCompressError(INSTALL_HINT, params=[])
    if trt_major(trt.__version__) < 10:
        raise VitCompressError(f"TensorRT {trt.__version__} is older than 10; install tensorrt>=10", params=[])
    return trt


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``'10.13.0.35'`` -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise VitCompressError(f"cannot read the TensorRT version {version!r}; reinstall TensorRT", params=[]) from None


def compute_capability(device: torch.device | str | None = None) -> str | None:
    """``"9.0"`` for an H100 (the CUDA device's compute capability); None without CUDA."""
    device = torch.device(device or "cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return f"{major}.{minor}"


def gpu_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or "cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return "none (host memory)"
    return torch.cuda.get_device_name(device)


@dataclass
class BuildConfig:
    """Engine build settings (serialised into the sidecar).

    The fields carry their default, help text and range once (``vitcompress.config.setting``); the
    ``export`` command's TensorRT options are generated from them. The profiles may be given as
    ``"1:8:32"``, ``8`` or ``(1, 8, 32)``: ``validate`` returns a checked copy with them parsed
    (``Profile``), which is what ``build_engine`` and the sidecar read."""

    batch: ProfileLike = setting("1:8:32", "Batch profile MIN:OPT:MAX of the engine.")
    img_size: ProfileLike = setting(None, "Image side profile MIN:OPT:MAX (dynamic-size exports).")
    precision: str = setting("fp32", "fp32 or fp16.", choices=EXPORT_PRECISIONS)
    workspace_gib: float = setting(4.0, "TensorRT workspace limit in GiB.", gt=0, le=1e6)
    opt_level: int = setting(3, "TensorRT builder optimisation level 0..5.", ge=0, le=5)
    timing_cache: str | None = setting(None, "TensorRT timing cache file (read and updated).")
    keep_permille: ProfileLike = setting(
        None,
        "--runtime-keep with --trt: engine profile MIN:OPT:MAX of keep_permille (default 1:<schedule's rate>:1000).",
    )

    @classmethod
    def make(
        cls,
        batch: ProfileLike = "1:8:32",
        img_size: ProfileLike = None,
        precision: str = "fp32",
        workspace_gib: float = 4.0,
        opt_level: int = 3,
        timing_cache: str | None = None,
        keep_permille: ProfileLike = None,
    ) -> BuildConfig:
        """The validated config of these values (``BuildConfig(...).validate()``)."""
        return cls(batch, img_size, precision, workspace_gib, opt_level, timing_cache, keep_permille).validate()

    def validate(self) -> BuildConfig:
        """A checked copy with the profiles parsed; a one-line ``VitCompressError`` for a bad value."""
        w = self.workspace_gib
        if (
            isinstance(w, (int, float))
            and not isinstance(w, bool)
            and not in_range(w, field_range(self, "workspace_gib"))
        ):
            raise VitCompressError(
                f"workspace_gib={w} must be {range_text(field_range(self, 'workspace_gib'))} GiB (and finite)",
                params=["workspace_gib"],
            )
        level, bounds = self.opt_level, field_range(self, "opt_level")
        if isinstance(level, int) and not isinstance(level, bool) and not in_range(level, bounds):
            raise VitCompressError(
                f"opt_level={level} (the builder optimisation level) is outside {bounds['ge']}..{bounds['le']}",
                params=["opt_level"],
            )
        check_fields(self)
        keep = parse_profile(self.keep_permille, "keep_permille") if self.keep_permille is not None else None
        if keep is not None and keep.max > 1000:
            raise VitCompressError(f"keep_permille={keep} goes above 1000 (a keep rate of 1)", params=["keep_permille"])
        return dataclasses.replace(
            self,
            batch=parse_profile(self.batch, "batch"),
            img_size=parse_profile(self.img_size, "img_size") if self.img_size is not None else None,
            workspace_gib=float(w),
            timing_cache=str(self.timing_cache) if self.timing_cache else None,
            keep_permille=keep,
        )

    def to_dict(self) -> dict:
        cfg = self.validate()
        d = asdict(cfg)
        d["batch"] = cfg.batch.to_dict()  # type: ignore[union-attr]
        d["img_size"] = cfg.img_size.to_dict() if cfg.img_size else None  # type: ignore[union-attr]
        d["keep_permille"] = cfg.keep_permille.to_dict() if cfg.keep_permille else None  # type: ignore[union-attr]
        return d


def profile_shapes(input_shape: list, cfg: BuildConfig) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes for the image input; ``input_shape`` is the ONNX input's shape with
    ``-1``/None on dynamic axes ([N, C, H, W])."""
    shape = [None if (d is None or (isinstance(d, int) and d < 0)) else int(d) for d in input_shape]
    if len(shape) != 4:
        raise VitCompressError(f"expected an NCHW image input, the ONNX input has shape {input_shape}", params=[])
    dyn_hw = shape[2] is None or shape[3] is None
    if dyn_hw and cfg.img_size is None:
        raise VitCompressError(
            "the ONNX file has a dynamic image size; pass img_size=MIN:OPT:MAX for the engine profile",
            params=["img_size"],
        )
    out = []
    for i in range(3):
        s = list(shape)
        s[0] = cfg.batch.as_tuple()[i]
        if dyn_hw:
            s[2] = s[3] = cfg.img_size.as_tuple()[i]
        elif cfg.img_size is not None and cfg.img_size.as_tuple()[i] != shape[2]:
            raise VitCompressError(
                f"img_size {cfg.img_size} does not match the ONNX file's fixed size {shape[2]}; "
                "export with dynamic_size=True",
                params=["img_size", "dynamic_size"],
            )
        if s[1] is None:
            raise VitCompressError(
                "the ONNX input has a dynamic channel axis; export it with a fixed channel count", params=[]
            )
        out.append(tuple(s))
    return out[0], out[1], out[2]


def sidecar(
    engine_path: str | Path,
    onnx_path: str | Path,
    cfg: BuildConfig,
    *,
    trt_version: str,
    gpu: str,
    input_name: str,
    shapes: tuple,
    source: str | None = None,
    strongly_typed: bool = False,
    compute_capability: str | None = None,
    keep: Profile | None = None,
) -> dict:
    """The JSON record written next to an engine."""
    mn, opt, mx = shapes
    profile = {"min": list(mn), "opt": list(opt), "max": list(mx)}
    if keep is not None:
        profile[KEEP_INPUT] = keep.to_dict()
    return {
        "format": "vitcompress-trt-engine",
        "engine": Path(engine_path).name,
        "onnx": str(onnx_path),
        "source_artifact": source,
        "tensorrt_version": trt_version,
        "strongly_typed": strongly_typed,
        "gpu": gpu,
        "compute_capability": compute_capability,
        "host": platform.node(),
        "precision": cfg.precision,
        "input": input_name,
        "profile": profile,
        "build": cfg.to_dict(),
    }


def sidecar_path(engine_path: str | Path) -> Path:
    return Path(str(engine_path) + ".json")


def read_sidecar(engine_path: str | Path) -> dict:
    """Parse an engine's sidecar JSON."""
    p = sidecar_path(engine_path)
    try:
        d = json.loads(p.read_text())
        if d.get("format") != "vitcompress-trt-engine":
            raise ValueError("not a vitcompress engine sidecar")
        return d
    except FileNotFoundError:
        raise VitCompressError(
            f"engine sidecar {str(p)!r} is missing; rebuild the engine (export with trt=True)", params=["trt"]
        ) from None
    except Exception as e:
        raise VitCompressError(
            f"engine sidecar {str(p)!r} is corrupt ({type(e).__name__}); rebuild the engine (export with trt=True)",
            params=["trt"],
        ) from None


def onnx_inputs(onnx_path) -> list[tuple[str, list, int]]:
    """(name, shape with None on dynamic axes, ONNX element type) of every graph input."""
    m = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    out = []
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        out.append((inp.name, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim], tt.elem_type))
    return out


def _keep_profile(onnx_path, cfg: BuildConfig) -> Profile:
    """``keep_permille`` MIN:OPT:MAX: the config's, else the one the export recorded in its metadata."""
    if cfg.keep_permille is not None:
        return cfg.keep_permille
    m = onnx.load(str(onnx_path), load_external_data=False)
    md = {p.key: p.value for p in m.metadata_props}
    try:
        keep = json.loads(md["vitcompress.export"])["runtime_keep"]["profile"]
        return Profile(int(keep["min"]), int(keep["opt"]), int(keep["max"]))
    except (KeyError, TypeError, ValueError):
        return Profile(1, 1000, 1000)


def _parse(trt, builder, logger, onnx_path):
    """The network of ``onnx_path`` (TensorRT's ONNX parser); parser errors become one line."""
    # no creation flags: TensorRT 10 builds a weakly typed network (EXPLICIT_BATCH is ignored there),
    # TensorRT 11 a strongly typed one (its STRONGLY_TYPED flag is deprecated: always on)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(min(parser.num_errors, 3)):
            e = parser.get_error(i)
            errs.append(f"node {e.node_name()!r} ({e.node_operator()}): {e.desc()}")
        raise VitCompressError(
            f"TensorRT cannot parse {str(onnx_path)!r}: {'; '.join(errs)[:300]}; "
            "export with trt=True, whose check names what TensorRT refuses, and report it",
            params=["trt"],
        )
    return network, parser


def qdq_types(onnx_path: str | os.PathLike) -> list[str]:
    """The quantized types (``int8``, ``fp8``) of the QuantizeLinear nodes of an ONNX file, from
    their zero points (empty for a graph without explicit quantization)."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    kinds = {t.name: t.data_type for t in proto.graph.initializer}
    found = {kinds.get(n.input[2]) for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    names = {3: "int8", 17: "fp8"}  # onnx.TensorProto INT8, FLOAT8E4M3FN
    return sorted(names[k] for k in found if k in names)


def build_engine(
    onnx_path: str | os.PathLike, engine_path: str | os.PathLike, cfg: BuildConfig, source: str | None = None
) -> dict:
    """Parse ``onnx_path``, build a serialised engine with one optimisation profile, write it and its
    sidecar (``<engine>.json``) atomically. Returns the sidecar dict. Needs ``tensorrt`` (and a GPU)."""
    cfg = cfg.validate()
    trt = require_tensorrt()
    major = trt_major(trt.__version__)
    inputs = onnx_inputs(onnx_path)
    name, shape, elem = inputs[0]
    shapes = profile_shapes(shape, cfg)
    keep = _keep_profile(onnx_path, cfg) if any(i[0] == KEEP_INPUT for i in inputs) else None
    strongly_typed = major >= 11
    if strongly_typed and cfg.precision == "fp16" and elem != _FLOAT16:
        raise VitCompressError(
            f"TensorRT {trt.__version__} builds strongly typed networks: an fp16 engine needs an fp16 ONNX; "
            "export with precision=fp16",
            params=["precision"],
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    config.builder_optimization_level = cfg.opt_level
    if cfg.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if not strongly_typed:  # TensorRT 10 builds a weakly typed Q/DQ graph with the flag of each quantized type
        for kind in qdq_types(onnx_path):
            config.set_flag(getattr(trt.BuilderFlag, kind.upper()))
    cache_bytes = b""
    if cfg.timing_cache and Path(cfg.timing_cache).is_file():
        cache_bytes = Path(cfg.timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # a cache file TensorRT cannot read, or one from another device or TensorRT version: start afresh
        if cache_bytes:
            logger.log(
                trt.Logger.WARNING,
                f"timing cache {cfg.timing_cache!r} is from another GPU or TensorRT version; starting a new one",
            )
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            raise VitCompressError(
                "TensorRT refused a new, empty timing cache; build without timing_cache", params=["timing_cache"]
            )
    profile = builder.create_optimization_profile()
    profile.set_shape(name, shapes[0], shapes[1], shapes[2])
    if keep is not None:
        profile.set_shape_input(KEEP_INPUT, [keep.min], [keep.opt], [keep.max])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VitCompressError(
            "TensorRT could not build the engine (see the TensorRT log above); "
            "try a larger workspace_gib or a smaller profile",
            params=["workspace_gib"],
        )
    side = sidecar(
        engine_path,
        onnx_path,
        cfg,
        trt_version=trt.__version__,
        gpu=gpu_name(),
        input_name=name,
        shapes=shapes,
        source=source,
        strongly_typed=strongly_typed,
        compute_capability=compute_capability(),
        keep=keep,
    )
    with atomic_file(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
        with atomic_file(sidecar_path(engine_path)) as tmp_side:
            tmp_side.write_text(json.dumps(side, indent=1) + "\n")
    built_cache = config.get_timing_cache() if cfg.timing_cache else None
    if built_cache is not None:  # None: TensorRT kept no cache (the file is left as it was)
        with atomic_file(cfg.timing_cache) as tmp:
            tmp.write_bytes(bytes(built_cache.serialize()))
    return side
