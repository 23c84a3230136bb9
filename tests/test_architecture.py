"""The layers of DESIGN.md hold in the code: each package imports only its own layer and those below
(at module level and inside functions), the libraries import neither Kedro nor MLflow, no two
modules import each other in a circle, no library module outgrows ~450 lines, and the Kedro
nodes stay thin (about 40 lines: read, call one library function, return)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "llama2_pipeline"
#: layer of each top-level module or package of llama2_pipeline (a module may import its own layer and lower)
LAYERS = {
    "core": 0, "world": 1,
    "data": 2, "tokenizer": 2, "model": 2, "training": 2, "evaluation": 2,
    "recipe": 3,
    "project": 4, "pipelines": 4, "settings": 4, "pipeline_registry": 4,
    "commands": 5, "cli": 5, "__main__": 5,  # the kedro CLI's project commands; python -m llama2_pipeline
}
LIBRARIES = ("world", "data", "tokenizer", "model", "training", "evaluation", "core", "recipe")
MAX_LIBRARY_LINES = 450
MAX_NODE_LINES = 40


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str) -> dict[str, int]:
    """Every module ``path`` imports (absolute names) -> the line of the first such import."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
        else:
            continue
        for n in names:
            out.setdefault(n, node.lineno)
    return out


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 and parts[0] == "llama2_pipeline" else None


def test_every_top_level_name_has_a_layer():
    top = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert top == set(LAYERS), top ^ set(LAYERS)


def test_no_import_from_a_higher_layer():
    bad = []
    for name, path in modules().items():
        own = layer(name)
        for target, line in imports(path, name).items():
            other = layer(target)
            if own is not None and other is not None and other > own:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} (layer {other} > {own})")
    assert not bad, "\n".join(bad)


def test_the_world_imports_nothing_of_the_project_and_libraries_no_kedro_or_mlflow():
    bad = []
    for name, path in modules().items():
        top = name.split(".")[1] if "." in name else ""
        for target, line in imports(path, name).items():
            if top == "world" and target.startswith("llama2_pipeline") and not target.startswith("llama2_pipeline.world"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
            if top in LIBRARIES and target.split(".")[0] in ("kedro", "kedro_mlflow", "mlflow"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_at_module_level():
    """Module-level imports only: an import inside a function runs after both modules loaded."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                edges |= {t for t in [mod] + [f"{mod}.{a.name}" for a in node.names] if t in mods}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in mods}
        graph[name] = edges - {name}
    cycles = [(a, b) for a, targets in graph.items() for b in targets
              if a in graph.get(b, ()) and not b.startswith(a) and not a.startswith(b)]  # a package and its module
    assert not cycles, cycles


def test_the_recipe_libraries_import_one_another_one_way():
    """Between packages of layer 2 (functions' imports included) the arrows form no loop:
    tokenizer below model below evaluation (answers generated and judged) below training, whose
    stages use it; the reward models' and GAtt's held-out evaluations are training's own
    (``training.reward_eval``, ``training.gatt_eval``)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        top = name.split(".")[1] if "." in name else ""
        if LAYERS.get(top) != 2:
            continue
        graph.setdefault(top, set()).update(t.split(".")[1] for t in imports(path, name)
                                            if t.startswith("llama2_pipeline.") and layer(t) == 2
                                            and t.split(".")[1] != top)
    order: list[str] = []
    while len(order) < len(graph):
        ready = sorted(p for p in graph if p not in order and graph[p] <= set(order))
        assert ready, f"a loop among {sorted(set(graph) - set(order))}: {graph}"
        order += ready
    assert order.index("evaluation") < order.index("training") and order.index("model") < order.index("evaluation")


def test_no_library_module_over_450_lines():
    big = [f"{p.relative_to(ROOT)}: {n} lines" for name, p in modules().items()
           if name.split(".")[1:2] and name.split(".")[1] in LIBRARIES
           and (n := len(p.read_text().splitlines())) > MAX_LIBRARY_LINES]
    assert not big, big


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("pipelines/**/nodes.py")) + [PACKAGE / "pipelines/shared.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_nodes_are_thin(path):
    tree = ast.parse(path.read_text())
    long = [f"{f.name}: {f.end_lineno - f.lineno + 1} lines" for f in tree.body
            if isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > MAX_NODE_LINES]
    assert not long, long
