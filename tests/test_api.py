"""docs/api.md is the public API list: its first table is exactly ``vitcompress.__all__``, and every
name of its submodule table exists (and is public in its module's ``__all__`` where there is one)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import vitcompress
import vitcompress.exporters

API = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def section(title: str, text: str | None = None) -> list[list[str]]:
    """The table rows (cells) of the ``## title`` section of docs/api.md (or of ``text``), header
    rows left out."""
    text = API.read_text() if text is None else text
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/api.md has no section {title!r}"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in match.group(1).splitlines()]
    rows = [r for r in rows if len(r) > 1]
    return rows[2:]  # header and separator


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_the_documented_top_level_names_are_exactly_vitcompress_all():
    documented = [n for row in section("`vitcompress`") for n in names(row[0])]
    assert len(documented) == len(set(documented)), "a name is listed twice"
    assert sorted(documented) == sorted(vitcompress.__all__)
    for name in documented:
        assert getattr(vitcompress, name) is not None


def test_the_comparison_fails_when_either_side_changes_alone(monkeypatch):
    page = API.read_text()
    documented = sorted(n for row in section("`vitcompress`", page) for n in names(row[0]))
    monkeypatch.setattr(vitcompress, "__all__", [*vitcompress.__all__, "new_name"])
    assert documented != sorted(vitcompress.__all__)
    monkeypatch.undo()
    added = page.replace("| `prune` |", "| `prune_more` | x |\n| `prune` |", 1)
    assert sorted(n for row in section("`vitcompress`", added) for n in names(row[0])) != sorted(vitcompress.__all__)
    dropped = page.replace("| `prune` |", "| prune |", 1)
    assert sorted(n for row in section("`vitcompress`", dropped) for n in names(row[0])) != sorted(vitcompress.__all__)


SUBMODULES = section("Submodules")


@pytest.mark.parametrize("row", SUBMODULES, ids=[names(r[0])[0] for r in SUBMODULES])
def test_every_documented_submodule_name_exists_and_is_public(row):
    [module_name], listed = names(row[0]), names(row[1])
    assert listed, f"{module_name}: no names listed"
    module = importlib.import_module(module_name)
    for name in listed:
        assert hasattr(module, name), f"{module_name}.{name} is documented but does not exist"
    public = getattr(module, "__all__", None)
    if public is not None:
        assert set(listed) <= set(public), f"{module_name}: {sorted(set(listed) - set(public))} not in __all__"


def test_the_exporters_row_lists_the_whole_export_api():
    [row] = [r for r in SUBMODULES if names(r[0]) == ["vitcompress.exporters"]]
    assert sorted(names(row[1])) == sorted(vitcompress.exporters.__all__)
