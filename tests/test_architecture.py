"""The package's shape, as docs/architecture.md draws it: no import circles, and the floors that must
not reach up (the trainer's classes know nothing of Ray or of the loop)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rlwhf", "rewards")
# docs/architecture.md's floors, ground first: a module imports from its own floor or below, never up.
FLOORS = (
    (
        "rewards",
        "rlwhf.errors",
        "rlwhf.faults",
        "rlwhf.models",
        "rlwhf.algo",
        "rlwhf.run_log",
        "rlwhf.traces",
        "rlwhf.tools",
    ),
    ("rlwhf.config",),
    ("rlwhf.data", "rlwhf.checkpoints", "rlwhf.reward_runner"),
    ("rlwhf.train",),
    ("rlwhf.sync",),
    ("rlwhf.rollout",),
    ("rlwhf.evaluation", "rlwhf.workers"),
    ("rlwhf.actors", "rlwhf.starting_policy", "rlwhf.commands"),
    ("rlwhf.loop",),
    ("rlwhf.cli",),
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (inside functions too), each taken
    as the longest known module its dotted name starts with; a module's own packages left out (Python
    imports those first anyway, so they cannot close a circle through it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets += [f"{base}.{alias.name}" for alias in node.names] + [base]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle_and_nothing_else():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_rlwhf_or_rewards_imports_itself_through_others():
    graph = import_graph()
    assert "rlwhf.loop" in graph and "rlwhf.starting_policy" in graph["rlwhf.loop"]  # the graph is read
    found = circles(graph)
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def floor_of(module: str) -> int | None:
    for floor, rooms in enumerate(FLOORS, start=1):
        if any(module == room or module.startswith(room + ".") for room in rooms):
            return floor
    return None


def test_every_module_has_a_floor_and_no_import_runs_up():
    graph = import_graph()
    homeless = sorted(m for m in graph if floor_of(m) is None and m != "rlwhf")
    assert not homeless, f"modules on no floor of docs/architecture.md (tests/test_architecture.py FLOORS): {homeless}"
    up = [
        f"{m} (floor {floor_of(m)}) -> {t} (floor {floor_of(t)})"
        for m, targets in graph.items()
        if m != "rlwhf"
        for t in sorted(targets)
        if t != "rlwhf" and floor_of(t) > floor_of(m)
    ]
    assert not up, "imports that run up a floor: " + "; ".join(up)


def test_the_trainer_and_the_data_know_nothing_of_ray_or_of_what_drives_them():
    graph = import_graph()
    upper = {"rlwhf.loop", "rlwhf.actors", "rlwhf.workers", "rlwhf.starting_policy", "rlwhf.cli"}
    for name, path in modules().items():
        if name.startswith(("rlwhf.train", "rlwhf.data", "rlwhf.algo", "rlwhf.models", "rewards")):
            assert not graph[name] & upper, f"{name} imports {sorted(graph[name] & upper)}"
            assert not any(m.startswith("rlwhf.commands") for m in graph[name]), f"{name} imports a command"
            tree = ast.parse(path.read_text())
            ray = [
                n
                for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom))
                and any((getattr(n, "module", None) or a.name).split(".")[0] == "ray" for a in n.names)
            ]
            assert not ray, f"{name} imports ray"


# Imports inside a function are kept for what is heavy to import (these libraries, and the project's
# modules that import one of them at their top), so that a command which does not need them starts
# fast; every other import stands at the top of its module. The files below are the exceptions, each
# for its reason.
HEAVY_LIBRARIES = {
    "torch", "vllm", "transformers", "trl", "ray", "datasets", "sympy", "matplotlib", "pandas", "pyarrow",
    "reasoning_gym", "gguf", "safetensors", "wandb", "tokenizers", "numpy", "peft", "accelerate",
}  # fmt: skip
LAZY_BY_DESIGN = {
    "rlwhf/cli.py": "each command imports what it runs: `rlwhf --version` and `rlwhf validate` load no trainer",
    "rlwhf/commands/plan.py": "benchmarks/gpu_trainer.py imports it on a GPU machine that has torch and transformers only",
    "rewards/_sandbox/pool.py": "python_paths() imports the C module _json to find the interpreter's own library folder",
}


def module_level_imports(tree: ast.Module) -> list[str]:
    """Dotted names a module imports when it is imported (not inside functions, not for type checking)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(inner, ast.Import):
                found += [a.name for a in inner.names]
            elif isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                found += [inner.module] + [f"{inner.module}.{a.name}" for a in inner.names]
    return found


def heavy_modules() -> set[str]:
    """The project's modules that import a heavy library when imported, directly or through another."""
    known = modules()
    direct = {name: module_level_imports(ast.parse(path.read_text())) for name, path in known.items()}
    heavy = {name for name, names in direct.items() if any(n.split(".")[0] in HEAVY_LIBRARIES for n in names)}
    changed = True
    while changed:
        changed = False
        for name, names in direct.items():
            if name not in heavy and any(n in heavy or n.rpartition(".")[0] in heavy for n in names):
                heavy.add(name)
                changed = True
    return heavy


def test_imports_inside_functions_are_only_of_what_is_heavy_to_import():
    heavy = heavy_modules()
    assert "rlwhf.train.policy" in heavy and "rlwhf.config" not in heavy and "rewards" not in heavy
    needless = []
    for path in modules().values():
        relative = str(path.relative_to(ROOT))
        if relative in LAZY_BY_DESIGN:
            continue
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                for imported in names:
                    if imported.split(".")[0] not in HEAVY_LIBRARIES and imported not in heavy:
                        needless.append(f"{relative}:{node.lineno} {ast.unparse(node)}")
    assert not needless, "imports inside functions of what is cheap to import (move them to the top): " + "; ".join(
        needless
    )


def test_the_recipe_and_the_cli_import_no_heavy_library():
    """Every command reads a recipe first: rlwhf.config, rlwhf.cli and rlwhf.errors stay light."""
    import subprocess
    import sys

    code = "import sys, rlwhf.cli, rlwhf.config, rlwhf.errors, rewards; print(sorted(m for m in {m.split('.')[0] for m in sys.modules} & %r))"
    proc = subprocess.run([sys.executable, "-c", code % HEAVY_LIBRARIES], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
