"""The project's import graph has no cycles (every import counts, function-local ones included).

The layer contract itself (core < exporters < benchmarks < cli, reducers below training) is
checked by ``lint-imports`` in ``make lint``; this test finds what a layer contract does not: a cycle
anywhere, also between modules of one layer. It reports every cycle at once.
"""

from __future__ import annotations

import grimp


def strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """The groups of modules that import each other, directly or through others (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # iterative: the graph may be deeper than the recursion limit
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        group.append(m)
                        if m == node:
                            break
                    groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return [g for g in groups if len(g) > 1]


def describe(graph: grimp.ImportGraph, group: list[str]) -> str:
    """One cycle through the first module of a group, with the line of each import."""
    first = group[0]
    nxt = sorted(m for m in graph.find_modules_directly_imported_by(first) if m in group)[0]
    chain = [first, *graph.find_shortest_chain(importer=nxt, imported=first)]
    steps = []
    for a, b in zip(chain, chain[1:]):
        lines = sorted({d["line_number"] for d in graph.get_import_details(importer=a, imported=b)})
        steps.append(f"{a} -> {b} (l.{','.join(map(str, lines))})")
    return f"{len(group)} modules {group}: " + "; ".join(steps)


def test_strongly_connected_finds_each_cycle_once():
    graph = grimp.ImportGraph()
    for m in ("p.a", "p.b", "p.c", "p.d", "p.e"):
        graph.add_module(m)
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e"), ("p.e", "p.d")):
        graph.add_import(importer=a, imported=b, line_number=1, line_contents=f"import {b}")
    assert sorted(strongly_connected(graph)) == [["p.a", "p.b", "p.c"], ["p.d", "p.e"]]
    assert describe(graph, ["p.d", "p.e"]) == "2 modules ['p.d', 'p.e']: p.d -> p.e (l.1); p.e -> p.d (l.1)"


def test_the_import_graph_has_no_cycles():
    graph = grimp.build_graph("vitcompress", include_external_packages=False)
    assert len(graph.modules) > 50  # the whole package, the linked exporters/ and benchmarks/ included
    cycles = [describe(graph, g) for g in strongly_connected(graph)]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles)
