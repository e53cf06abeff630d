"""The package's shape: imports flow one way (data -> models/diffusion -> train -> checkpoint ->
sample -> evaluate/render) and no module imports itself back through others.

The import graph is read from the source (every `import` statement, also those inside
functions), so a lazy import that would close a cycle counts as well."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sid2video", "evaluation", "configs")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from a import b` counts as a.b when a.b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        # A package's __init__ that only documents itself imports nothing; importing a submodule
        # runs its package's __init__, which is not an edge of the design.
        graph[name] = {t for t in _imports(path, name, known)
                       if not (modules[t].name == "__init__.py" and not _imports(modules[t], t, known))}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (a list of modules, first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back():
    assert _cycle(_graph()) is None


def _reach(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


# (modules, what they must never reach, directly or through others). The data layer's command
# (`sid2video prepare`) parses flags like every command and is not part of the layer here.
COMMANDS = ("sid2video.data.prepare",)
RULES = [
    (("sid2video.diffusion",), ("sid2video.models", "sid2video.data", "sid2video.train", "evaluation")),
    (("sid2video.models",), ("sid2video.diffusion", "sid2video.data", "sid2video.train", "evaluation")),
    (("sid2video.data",), ("sid2video.models", "sid2video.diffusion", "sid2video.train", "evaluation")),
    (("sid2video.train", "sid2video.trainer", "sid2video.optim", "sid2video.runlog", "sid2video.preview"),
     ("sid2video.sample", "evaluation", "sid2video.render", "sid2video.demo")),
    (("sid2video.sample", "sid2video.render", "evaluation"),
     ("sid2video.train", "sid2video.trainer", "sid2video.optim", "sid2video.runlog", "sid2video.preview",
      "sid2video.train_command", "sid2video.demo")),
    (("configs",), ("sid2video.train", "sid2video.trainer", "sid2video.models.uvit", "sid2video.cli")),
]


@pytest.mark.parametrize("sources,forbidden", RULES)
def test_imports_run_one_way(sources, forbidden):
    graph = _graph()
    for name in graph:
        if name in COMMANDS or not any(name == s or name.startswith(s + ".") for s in sources):
            continue
        bad = sorted(m for m in _reach(graph, name)
                     if any(m == f or m.startswith(f + ".") for f in forbidden))
        assert not bad, f"{name} reaches {bad}"


def test_config_files_import_only_the_config_module():
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.name == "__init__.py":
            continue
        imported = _imports(path, _module_name(path), set(_modules()))
        assert imported <= {"sid2video.config"}, f"{path.name} imports {sorted(imported)}"
