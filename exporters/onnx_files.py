"""Writing an exported graph: the ONNX file, its optional external-data side file, and the atomic
replacement of an earlier export (side file included)."""

from __future__ import annotations

import glob
import os
import secrets
from pathlib import Path

import onnx


def weight_bytes(proto) -> int:
    """Bytes of the initializers stored inside the graph."""
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def save(proto, path: Path, side_name: str | None) -> None:
    """Write ``proto`` to ``path``; with ``side_name``, every tensor above 1 KiB goes to the side
    file ``side_name`` next to it (the ``location`` the file refers to)."""
    if side_name:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=side_name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(path))


def data_name(output: Path) -> str:
    """A side-file name no earlier export used: ``<output>.<8 hex digits>.data``."""
    while True:
        name = f"{output.name}.{secrets.token_hex(4)}.data"
        if not os.path.lexists(output.parent / name):
            return name


def external_locations(path: Path) -> set[str]:
    """The external-data files an existing ONNX file refers to (empty where it is unreadable)."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return set()
    out: set[str] = set()

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    for t in tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            out.update(e.value for e in t.external_data if e.key == "location")
    return out


def install(tmp_path: Path, side_name: str | None, output: Path) -> None:
    """Move a checked file (and its side file) from the temporary folder onto ``output``.

    The side file ``side_name`` has a name no other file uses (``data_name``) and is moved first:
    until the ``.onnx`` rename, the old file still refers to its own, untouched side file; the
    ``.onnx`` rename switches to the new pair in one step. Then the side files the old file referred to are
    deleted (only ``<output>.*data`` siblings). A crash at any point leaves a consistent pair,
    at worst plus one unreferenced side file."""
    # the old file is parsed (without its weights) only where side files of its name exist
    siblings = list(output.parent.glob(glob.escape(output.name) + ".*data"))
    old = external_locations(output) if siblings and output.is_file() else set()
    moved = None
    try:
        if side_name:
            moved = output.parent / side_name
            os.replace(tmp_path.parent / side_name, moved)
        os.replace(tmp_path, output)
    except BaseException:
        if moved is not None:
            moved.unlink(missing_ok=True)
        raise
    for loc in old - {side_name}:
        if Path(loc).name == loc and loc.startswith(output.name + ".") and loc.endswith(".data"):
            (output.parent / loc).unlink(missing_ok=True)
