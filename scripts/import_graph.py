"""Print the import graph of src/dlmodel as mermaid lines (docs/architecture.md is drawn from it):
one room per module (families/ and gui/ one room each), every relative import at the top of a file
or inside a function, errors.py and imports only for type hints left out.

    python scripts/import_graph.py
"""
import ast, pathlib, collections
root = pathlib.Path("src/dlmodel")
def room(path):
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts
    if parts[0] in ("families", "gui"): return parts[0]
    return parts[0] if parts[0] != "__init__" else None
edges = collections.defaultdict(set)
for p in root.rglob("*.py"):
    r = room(p)
    if r is None: continue
    t = ast.parse(p.read_text())
    tc = set()
    for n in ast.walk(t):
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            for m in ast.walk(n): tc.add(id(m))
    pkg = p.relative_to(root).parent.parts
    for n in ast.walk(t):
        if id(n) in tc or not isinstance(n, ast.ImportFrom) or n.level == 0: continue
        base = list(pkg[: len(pkg) - (n.level - 1)]) if n.level > 1 else list(pkg)
        mod = base + (n.module.split(".") if n.module else [])
        targets = [mod] if n.module else [mod + [a.name] for a in n.names]
        for tparts in targets:
            if not tparts: continue
            tr = tparts[0]
            if tr in ("errors",): continue
            if tr in ("families", "gui"): pass
            elif not (root / (tr + ".py")).exists(): continue
            if tr != r: edges[r].add(tr)
order = sorted(edges, key=lambda k: -len(edges[k]))
for k in order:
    print(f"  {k} --> {' & '.join(sorted(edges[k]))}")
