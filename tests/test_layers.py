"""The package imports one way (README, "How it works"): base -> arch -> space -> ops -> work -> run.

Every module's imports are parsed, the ones inside functions included (a function-level import is
how a cycle hides), and the test fails on any import cycle, on an import of a higher layer, and on a
module no layer names (a new module must be placed)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: layer of every module, by dotted name or package prefix (longest match wins), lowest first
LAYERS = {
    "base": ["prune_cli", "prune_cli.errors", "prune_cli.progress", "prune_cli.hub", "prune_cli.schema", "prune_cli.checkpoints",
             "prune_cli.rundir", "prune_cli.distributed", "prune_cli.tracking", "prune_cli.groups", "prune_cli.cache"],
    "arch": ["prune_cli.arch"],
    "space": ["prune_cli.heads", "prune_cli.units", "prune_cli.flops", "prune_cli.embeddings"],
    "ops": ["prune_cli.gates", "prune_cli.surgery", "prune_cli.standalone", "prune_cli.shipping", "prune_cli.models", "prune_cli.report", "prune_cli.bench",
            "prune_cli.bench_units", "prune_cli.bench_llm", "prune_cli.accounting"],
    "work": ["prune_cli.train", "prune_cli.distill", "prune_cli.schedules", "prune_cli.oneshot",
             "prune_cli.methods", "prune_cli.tasks", "prune_cli.metrics", "prune_cli.scratch"],
    "run": ["prune_cli.api", "prune_cli.run_cache", "prune_cli.commits", "prune_cli.validate", "prune_cli.stages", "prune_cli.pipeline", "prune_cli.cli", "prune_cli.sweep", "prune_cli.reports"],
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}


def modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "prune_cli").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules `name` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    facade = set()
    if name == "prune_cli":  # the package's public names (load_pruned, prune...), imported on first use by
        # its module-level __getattr__: the API facade sits above every layer, the package below them
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
                facade.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in facade:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    out = set()
    for target in found:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and target.startswith("prune_cli"):
            out.add(target)
    return out


def layer(name: str) -> int | None:
    while name:
        if name in RANK:
            return RANK[name]
        name = name.rpartition(".")[0]
    return None


def graph() -> dict[str, set[str]]:
    known = modules()
    # `from prune_cli import x` also names the root package; that edge is the import of x
    return {n: {t for t in imports(n, p, known) if t != "prune_cli" or n == "prune_cli"} for n, p in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    missing = sorted(n for n in modules() if layer(n) is None)
    assert not missing, f"place these modules in a layer of tests/test_layers.py (and README): {missing}"


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_no_module_imports_a_higher_layer():
    names = list(LAYERS)
    upward = [f"{a} ({names[layer(a)]}) -> {b} ({names[layer(b)]})" for a, targets in graph().items()
              for b in targets if layer(b) is not None and layer(a) is not None and layer(b) > layer(a)]
    assert not upward, "imports of a higher layer:\n" + "\n".join(sorted(upward))


def test_the_checker_sees_function_level_imports(tmp_path):
    """The test itself: an import inside a function is an edge."""
    pkg = tmp_path / "prune_cli"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from prune_cli import b\n    return b\n")
    (pkg / "b.py").write_text("from prune_cli.a import f\n")
    known = {"prune_cli": pkg / "__init__.py", "prune_cli.a": pkg / "a.py", "prune_cli.b": pkg / "b.py"}
    g = {n: {t for t in imports(n, p, known) if t != "prune_cli"} for n, p in known.items()}
    assert cycles(g) == [["prune_cli.a", "prune_cli.b"]]


def test_the_loop_and_the_pipeline_call_declared_hooks_never_probe_the_method():
    """Every hook the training loop, the runner and the stages use is declared on
    methods.base.Pruner with a default (issue 33): a getattr/hasattr on the method would hide a
    hook a method forgot."""
    probes = []
    package = SRC / "prune_cli"
    for path in (package / "train.py", package / "pipeline.py", *sorted((package / "stages").glob("*.py"))):
        name = path.relative_to(package)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
                target = ast.unparse(node.args[0])
                if target in ("pruner", "self.pruner", "runner.pruner"):
                    probes.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    assert not probes, probes
