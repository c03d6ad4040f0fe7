"""TensorRT engine building from an exported ONNX file, with a JSON sidecar.

TensorRT 10: a weakly typed network; fp16 is the ``BuilderFlag.FP16`` flag (fed the fp32 or fp16
ONNX). TensorRT 11 removed the precision flags: networks are strongly typed, so an fp16 engine is
built from the fp16 ONNX (``export --precision fp16``) and the tensor types of the file decide.
One optimisation profile covers ``batch`` MIN:OPT:MAX and, for a dynamic-size export,
``img_size`` MIN:OPT:MAX. The timing cache file is read if present and written back after the
build, so repeated builds on the same GPU skip most kernel timing.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from vitcompress.errors import VitCompressError

from .profiles import Profile, ProfileLike, parse_profile

INSTALL_HINT = (
    "TensorRT is not installed; install it with `pip install 'vitcompress[gpu]'` on a machine "
    "with an NVIDIA GPU (the ONNX file was written)"
)


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package imports and has a builder."""
    try:
        import tensorrt as trt  # noqa: F401
    except Exception:
        return False
    return hasattr(trt, "Builder")


def require_tensorrt():
    """The ``tensorrt`` module, or a ``VitCompressError`` that says how to install it."""
    try:
        import tensorrt as trt
    except Exception:
        raise VitCompressError(INSTALL_HINT) from None
    if not hasattr(trt, "Builder"):
        raise VitCompressError(INSTALL_HINT)
    return trt


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string (``'10.13.0.35'`` -> 10)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise VitCompressError(f"cannot read the TensorRT version {version!r}; reinstall TensorRT") from None


@dataclass
class BuildConfig:
    """Engine build settings (serialised into the sidecar)."""

    batch: Profile
    img_size: Profile | None = None
    precision: str = "fp32"
    workspace_gib: float = 4.0
    opt_level: int = 3
    timing_cache: str | None = None

    @classmethod
    def make(
        cls,
        batch: ProfileLike = (1, 8, 32),
        img_size: ProfileLike = None,
        precision: str = "fp32",
        workspace_gib: float = 4.0,
        opt_level: int = 3,
        timing_cache: str | None = None,
    ) -> BuildConfig:
        """Validate and build a config from CLI-style values."""
        if precision not in ("fp32", "fp16"):
            raise VitCompressError(f"precision {precision!r} is not supported; use fp32 or fp16")
        if not workspace_gib > 0:
            raise VitCompressError(f"--workspace {workspace_gib} must be > 0 GiB")
        if not 0 <= int(opt_level) <= 5:
            raise VitCompressError(f"builder optimisation level {opt_level} is outside 0..5")
        return cls(
            parse_profile(batch, "batch"),
            parse_profile(img_size, "img-size") if img_size is not None else None,
            precision,
            float(workspace_gib),
            int(opt_level),
            timing_cache,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = self.batch.to_dict()
        d["img_size"] = self.img_size.to_dict() if self.img_size else None
        return d


def profile_shapes(input_shape: list, cfg: BuildConfig) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes for the image input; ``input_shape`` is the ONNX input's shape with
    ``-1``/None on dynamic axes ([N, C, H, W])."""
    shape = [None if (d is None or (isinstance(d, int) and d < 0)) else int(d) for d in input_shape]
    if len(shape) != 4:
        raise VitCompressError(f"expected an NCHW image input, the ONNX input has shape {input_shape}")
    dyn_hw = shape[2] is None or shape[3] is None
    if dyn_hw and cfg.img_size is None:
        raise VitCompressError(
            "the ONNX file has a dynamic image size; pass --img-size MIN:OPT:MAX for the engine profile"
        )
    out = []
    for i in range(3):
        s = list(shape)
        s[0] = cfg.batch.as_tuple()[i]
        if dyn_hw:
            s[2] = s[3] = cfg.img_size.as_tuple()[i]
        elif cfg.img_size is not None and cfg.img_size.as_tuple()[i] != shape[2]:
            raise VitCompressError(
                f"--img-size {cfg.img_size} does not match the ONNX file's fixed size {shape[2]}; export with --dynamic-size"
            )
        if s[1] is None:
            raise VitCompressError("the ONNX input has a dynamic channel axis; export it with a fixed channel count")
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
) -> dict:
    """The JSON record written next to an engine."""
    mn, opt, mx = shapes
    return {
        "format": "vitcompress-trt-engine",
        "engine": Path(engine_path).name,
        "onnx": str(onnx_path),
        "source_artifact": source,
        "tensorrt_version": trt_version,
        "strongly_typed": strongly_typed,
        "gpu": gpu,
        "host": platform.node(),
        "precision": cfg.precision,
        "input": input_name,
        "profile": {"min": list(mn), "opt": list(opt), "max": list(mx)},
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
            f"engine sidecar {str(p)!r} is missing; rebuild the engine with `vitcompress export --trt`"
        ) from None
    except Exception as e:
        raise VitCompressError(
            f"engine sidecar {str(p)!r} is corrupt ({type(e).__name__}); rebuild the engine"
        ) from None


def _gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown"
    except Exception:  # pragma: no cover
        return "unknown"


def _onnx_input(onnx_path) -> tuple[str, list, int]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    inp = m.graph.input[0]
    tt = inp.type.tensor_type
    return inp.name, [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim], tt.elem_type


def build_engine(
    onnx_path: str | os.PathLike, engine_path: str | os.PathLike, cfg: BuildConfig, source: str | None = None
) -> dict:
    """Parse ``onnx_path``, build a serialised engine with one optimisation profile, write it and its
    sidecar (``<engine>.json``) atomically. Returns the sidecar dict. Needs ``tensorrt`` and a GPU."""
    from vitcompress.io import atomic_file

    trt = require_tensorrt()
    major = trt_major(trt.__version__)
    name, shape, elem = _onnx_input(onnx_path)
    shapes = profile_shapes(shape, cfg)
    strongly_typed = major >= 11 or not hasattr(trt.BuilderFlag, "FP16")
    if strongly_typed and cfg.precision == "fp16" and elem != 10:  # 10 = FLOAT16
        raise VitCompressError(
            f"TensorRT {trt.__version__} builds strongly typed networks: an fp16 engine needs an fp16 ONNX; "
            "export with --precision fp16"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise VitCompressError(
            f"TensorRT cannot parse {str(onnx_path)!r}: {errs[:300]}; run the export without --trt and report it"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    config.builder_optimization_level = cfg.opt_level
    if cfg.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = b""
    if cfg.timing_cache and Path(cfg.timing_cache).is_file():
        cache_bytes = Path(cfg.timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VitCompressError(
            "TensorRT could not build the engine (see the TensorRT log above); "
            "try a larger --workspace or a smaller profile"
        )
    side = sidecar(
        engine_path,
        onnx_path,
        cfg,
        trt_version=trt.__version__,
        gpu=_gpu_name(),
        input_name=name,
        shapes=shapes,
        source=source,
        strongly_typed=strongly_typed,
    )
    with atomic_file(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
        with atomic_file(sidecar_path(engine_path)) as tmp_side:
            tmp_side.write_text(json.dumps(side, indent=1) + "\n")
    if cfg.timing_cache:
        with atomic_file(cfg.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return side
