"""No new import cycle among the package's own modules (every import counts, module-level or inside
functions). The cycles that exist today are listed below so that none can grow and no other can
appear. Both lists are empty now: the package has no import cycle, and this test keeps it so
(a cycle that must be tolerated for a while goes into the list with the reason beside it)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "peftarena_cli"

KNOWN_MODULE_CYCLES: set = set()
KNOWN_PACKAGE_CYCLES: set = set()


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = f.relative_to(PKG).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = m.split(".") if m else []
                    here = here[: len(here) - node.level + (1 if is_pkg else 0)]
                    base = ".".join(here + ([base] if base else []))
                else:
                    base = base.removeprefix("peftarena_cli").lstrip(".") if base.startswith("peftarena_cli") else None
                if base is None:
                    continue
                # "from X import y" depends on module X.y when there is one, else on X itself
                targets = [f"{base}.{a.name}".strip(".") if f"{base}.{a.name}".strip(".") in mods else base
                           for a in node.names]
            for t in targets:
                t = t.removeprefix("peftarena_cli").lstrip(".") if t.startswith("peftarena_cli") else t
                while t and t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    edges[m].add(t)
    return edges


def _sccs(g: dict[str, set[str]]) -> list[frozenset]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_new_import_cycles():
    mods = _modules()
    edges = _edges(mods)
    module_cycles = set(_sccs(edges))
    top = lambda m: m.split(".")[0]  # noqa: E731
    pkgs = {top(m) for m in mods if m}
    pedges = {p: set() for p in pkgs}
    for m, ts in edges.items():
        for t in ts:
            if m and t and top(m) != top(t):
                pedges[top(m)].add(top(t))
    package_cycles = set(_sccs(pedges))
    assert module_cycles <= KNOWN_MODULE_CYCLES, f"new module import cycle(s): {module_cycles - KNOWN_MODULE_CYCLES}"
    assert package_cycles <= KNOWN_PACKAGE_CYCLES, f"new package import cycle(s): {package_cycles - KNOWN_PACKAGE_CYCLES}"
