"""The TensorRT code and its stand-in checked against the real Python bindings of TensorRT 10 and 11.

The binding wheels ``tensorrt-cu12-bindings`` 10.13.0.35 and 11.4.0.106 are plain wheels on the
package registry; they cannot be imported without TensorRT's libraries, but their ``tensorrt.so``
holds every bound name as text and, for each documented member, a ``tensorrt::<Class>Doc::<member>``
symbol pointing at its docstring, whose ``:arg`` lines are the member's arguments. The test set-up
downloads the wheels once into a cache (``VITCOMPRESS_TRT_WHEELS``, default
``~/.cache/vitcompress-trt``) and skips, saying why, when the registry cannot be reached.

Checked: every TensorRT attribute that ``exporters/`` and ``benchmarks/`` use exists in both
versions (except the precision flag TensorRT 11 removed, which the code uses on 10 only), with the
number of arguments its docstring lists; every method, property and enum member the stand-in
offers exists in the version it imitates, methods with the documented number of arguments.
"""

from __future__ import annotations

import ast
import enum
import inspect
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from stand_ins import TRT_VERSIONS, use_tensorrt_stand_in

ROOT = Path(__file__).resolve().parent.parent
WHEELS = {10: "10.13.0.35", 11: "11.4.0.106"}
CACHE = Path(os.environ.get("VITCOMPRESS_TRT_WHEELS", Path.home() / ".cache" / "vitcompress-trt"))
#: names the code uses on TensorRT 10 only (guarded by the major version)
ONLY_10 = {"FP16"}


class Bindings:
    """The bound names and documented argument lists of one ``tensorrt.so``."""

    def __init__(self, so: bytes):
        words = {m.decode() for m in re.findall(rb"(?<=\0)[A-Za-z0-9_]{1,80}(?=\0)", so)}
        # the linker stores a string that ends another once ("INT8" inside "UINT8"): every suffix counts
        self.names = {w[i:] for w in words for i in range(len(w))}
        self.docs = _docs(so)

    def args(self, cls: str, member: str) -> list[str] | None:
        """Argument names of ``cls.member`` from its docstring, or None when it has none."""
        doc = self.docs.get((cls, member))
        return None if doc is None else re.findall(r"^\s*:arg (\w+):", doc, re.M)


def _docs(data: bytes) -> dict[tuple[str, str], str]:
    """``{(class, member): docstring}`` from the ``tensorrt::<Class>Doc::<member>`` symbols (ELF64)."""
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]

    def cstr(off: int) -> bytes:
        return data[off : data.index(b"\0", off)]

    by_name = {cstr(secs[shstrndx][4] + s[0]).decode(): s for s in secs}

    def file_offset(addr: int) -> int:
        return next(s[4] + addr - s[3] for s in secs if s[3] <= addr < s[3] + s[5] and s[1] != 8)

    rela = by_name[".rela.dyn"]
    relative = {}
    for i in range(rela[5] // 24):
        off, info, addend = struct.unpack_from("<QQq", data, rela[4] + 24 * i)
        if info & 0xFFFFFFFF == 8:  # R_X86_64_RELATIVE: a pointer in .data.rel.ro
            relative[off] = addend
    symtab, strtab = by_name[".symtab"], by_name[".strtab"]
    out = {}
    for i in range(symtab[5] // 24):
        st_name, _, _, _, value, size = struct.unpack_from("<IBBHQQ", data, symtab[4] + 24 * i)
        m = re.fullmatch(rb"_ZN8tensorrt(\d+)(\w+)", cstr(strtab[4] + st_name))
        if not m:
            continue
        n, rest = int(m.group(1)), m.group(2).decode()
        cls, rest = rest[:n], rest[n:]
        m2 = re.match(r"L(\d+)", rest)
        if not cls.endswith("Doc") or not m2:
            continue
        member = rest[m2.end() : m2.end() + int(m2.group(1))]
        addr = relative.get(value, value) if size == 8 else value
        out[(cls[:-3], member)] = cstr(file_offset(addr)).decode("utf-8", "replace")
    return out


def _wheel(version: str) -> Path:
    found = sorted(CACHE.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(CACHE)]
    try:
        run = subprocess.run([*cmd, f"tensorrt-cu12-bindings=={version}"], capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot download tensorrt-cu12-bindings=={version} from the package registry ({e})")
    found = sorted(CACHE.glob(f"tensorrt_cu12_bindings-{version}-*.whl"))
    if run.returncode or not found:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"cannot download tensorrt-cu12-bindings=={version} from the package registry (offline?): {last}")
    return found[0]


@pytest.fixture(scope="module")
def bindings() -> dict[int, Bindings]:
    out = {}
    for major, version in WHEELS.items():
        with zipfile.ZipFile(_wheel(version)) as z:
            so = next(n for n in z.namelist() if n.endswith("/tensorrt.so"))
            out[major] = Bindings(z.read(so))
    return out


# receivers in exporters/ and benchmarks/ -> the TensorRT class they hold
RECEIVERS = {
    "builder": "Builder",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "e": "ParserError",
    "cache": "ITimingCache",
    "built_cache": "ITimingCache",
    "logger": "Logger",
    "self.logger": "Logger",
    "self.runtime": "Runtime",
    "self.engine": "ICudaEngine",
    "self.context": "IExecutionContext",
}


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def tensorrt_uses() -> list[tuple[str, str, str, int | None]]:
    """(file:line, class or 'tensorrt', attribute, number of call arguments or None) of every use of
    a TensorRT object (``trt.X.Y`` chains and ``RECEIVERS``) in the files of exporters/ and
    benchmarks/ that import TensorRT."""
    out = []
    files = sorted((ROOT / "exporters").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    for path in files:
        text = path.read_text()
        if "require_tensorrt()" not in text and "import tensorrt" not in text:
            continue
        tree = ast.parse(text)
        calls = {id(n.func): len(n.args) + len(n.keywords) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or node.attr.startswith("__"):  # __version__: the package's
                continue
            where, direct = f"{path.name}:{node.lineno}", _receiver(node.value)
            base = node.value
            while isinstance(base, ast.Attribute) and _receiver(base) not in ("trt", "self.trt"):
                base = base.value
            if _receiver(base) in ("trt", "self.trt"):
                nargs = calls.get(id(node)) if direct in ("trt", "self.trt") else None
                out.append((where, "tensorrt", node.attr, nargs))
            elif direct in RECEIVERS:
                out.append((where, RECEIVERS[direct], node.attr, calls.get(id(node))))
    return out


def test_every_tensorrt_call_of_the_code_exists_in_tensorrt_10_and_11(bindings):
    uses = tensorrt_uses()
    attrs = {a for _, _, a, _ in uses}
    # the scan sees the calls it must (a guard against a scan that finds nothing)
    assert {"create_network", "set_timing_cache", "infer_shapes", "set_input_shape", "execute_async_v3"} <= attrs
    assert {"set_shape_input", "get_tensor_location", "deserialize_cuda_engine", "FP16", "WARNING"} <= attrs
    for major, b in bindings.items():
        for where, cls, attr, nargs in uses:
            if attr in ONLY_10 and major >= 11:
                assert attr not in b.names, f"{attr} is back in TensorRT {major}: drop the version guard"
                continue
            assert attr in b.names, f"{where}: {cls}.{attr} is not in TensorRT {WHEELS[major]}"
            documented = b.args(cls, attr)
            if nargs is not None and documented is not None:
                assert nargs == len(documented), f"{where}: {cls}.{attr} takes {documented} in {WHEELS[major]}"
    # the documented behaviours the code relies on (TensorRT 11's library keeps fewer docstring symbols)
    b = bindings[10]
    assert "or `None` if no timing cache is set" in b.docs[("IBuilderConfig", "get_timing_cache")]
    assert "insufficiently specified" in b.docs[("IExecutionContext", "infer_shapes")]
    assert b.args("IBuilderConfig", "set_timing_cache") == ["cache", "ignore_mismatch"]


def _members(module) -> list[tuple[str, str, object]]:
    """(class, member, object) of the stand-in's public API (methods, properties, enum members)."""
    out = []
    for cname, cls in vars(module).items():
        if not inspect.isclass(cls) or cls.__module__ != module.__name__ or cname.startswith("_"):
            continue
        if issubclass(cls, enum.Enum):
            out += [(cname, m, None) for m in cls.__members__]
            continue
        for name, obj in vars(cls).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or isinstance(obj, property)):
                out.append((cname, name, obj))
    return out


@pytest.mark.parametrize("version", TRT_VERSIONS)
def test_every_method_and_enum_of_the_stand_in_exists_with_its_arity(version, bindings, monkeypatch):
    trt = use_tensorrt_stand_in(monkeypatch, version)
    b = bindings[trt.MAJOR]
    members = _members(trt)
    assert len(members) > 60 and ("IExecutionContext", "infer_shapes", trt.IExecutionContext.infer_shapes) in members
    for cls, name, obj in members:
        assert name in b.names, f"the stand-in's {cls}.{name} is not in TensorRT {WHEELS[trt.MAJOR]}"
        documented = b.args(cls, name)
        if inspect.isfunction(obj) and documented is not None:
            params = [p for p in inspect.signature(obj).parameters if p != "self"]
            assert len(params) == len(documented), f"stand-in {cls}.{name}{params} vs TensorRT {documented}"
    for cls in ("Builder", "Runtime", "OnnxParser", "Logger", "IBuilderConfig", "ICudaEngine", "IExecutionContext"):
        assert cls in b.names
    assert ("BuilderFlag" in b.names) and (("FP16" in b.names) is (trt.MAJOR == 10))
    assert ("EXPLICIT_BATCH" in b.names) is hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
