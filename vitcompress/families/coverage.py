"""The coverage table of ``docs/pruning.md``, generated from the families.

``coverage_rows`` gives one Markdown row per registered family (its title, how many timm names it
lists, granularities, token reduction, seed methods) and one per refusal reason of the names a
family owns but refuses (``Family.refused_models``), with those names. Print the table with
``python -m vitcompress.families.coverage``; a test checks that the documented rows match.
"""

from __future__ import annotations

from collections import defaultdict

from . import families


def family_row(fam) -> str:
    names = fam.list_models()
    methods = ", ".join(fam.methods) if fam.methods else "- (one shot)"
    tokens = "yes" if fam.token_reduction else "no"
    return f"| `{fam.name}` | {fam.title} | {len(names)} | {', '.join(fam.kinds)} | {tokens} | {methods} |"


def refused_rows(fam) -> list[str]:
    """One row per refusal reason: the reason and the names it refuses."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, reason in fam.refused_models().items():
        by_reason[reason].append(name)
    return [
        f"| `{fam.name}` (refused) | {', '.join(f'`{n}`' for n in sorted(names))} | {len(names)} | - | - | {reason} |"
        for reason, names in sorted(by_reason.items())
    ]


def coverage_rows() -> list[str]:
    """Every family's row, then the rows of the names the families refuse."""
    fams = families()
    return [family_row(f) for f in fams] + [r for f in fams for r in refused_rows(f)]


HEADER = (
    "| family | models | timm names | granularities | token reduction | methods / refusal reason |\n"
    "| --- | --- | ---: | --- | --- | --- |"
)

if __name__ == "__main__":
    print(HEADER)
    print("\n".join(coverage_rows()))
