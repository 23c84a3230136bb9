"""dvc.yaml's code dependencies cannot drift from the code: every project module a stage can import
is covered by one of the stage's ``deps``, and every ``src`` dep names a module the stage imports.

What a stage imports: the project runtime that loads its parameters and writes its datasets, its
Kedro pipeline's modules, the functions of ``pipelines/shared.py`` its nodes use, and, from there,
every library module they import at module level or inside any function (libraries are followed
conservatively; the glue's other nodes, which the stage never runs, are not)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "llama2_pipeline"
#: modules every ``kedro run`` imports to load parameters and save datasets
RUNTIME = ["llama2_pipeline.settings", "llama2_pipeline.project.hooks", "llama2_pipeline.project.datasets"]
SHARED = "llama2_pipeline.pipelines.shared"


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _targets(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        return [mod] + [f"{mod}.{a.name}" for a in node.names]
    return []


def _lazy_target(target: str) -> str:
    """``package.Name`` of a package with lazy exports (``_LAZY``): the submodule defining it."""
    package, _, attr = target.rpartition(".")
    init = module_file(package)
    if init is not None and init.name == "__init__.py" and not module_file(target):
        lazy = getattr(importlib.import_module(package), "_LAZY", {})
        if attr in lazy:
            return f"{package}.{lazy[attr]}"
    return target


def _project_modules(targets: list[str]) -> set[str]:
    """The project modules (and the packages above them) an import statement loads."""
    found: set[str] = set()
    for target in map(_lazy_target, targets):
        if target.startswith("llama2_pipeline") and module_file(target):
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i]))}
    return found


def _parse(name: str) -> tuple[ast.Module, str]:
    path = module_file(name)
    return ast.parse(path.read_text()), name if path.name == "__init__.py" else name.rsplit(".", 1)[0]


def imports_of(name: str, inside_functions: bool = True) -> set[str]:
    """Project modules ``name`` imports at module level and, with ``inside_functions``, anywhere."""
    tree, package = _parse(name)
    nodes = ast.walk(tree) if inside_functions else iter(tree.body)
    return {m for node in nodes for m in _project_modules(_targets(node, package))}


def function_imports(name: str, functions: set[str]) -> set[str]:
    """Project modules imported inside ``functions`` of module ``name`` and the module's functions they call."""
    tree, package = _parse(name)
    defs = {d.name: d for d in tree.body if isinstance(d, ast.FunctionDef)}
    todo, seen, found = [f for f in functions if f in defs], set(), set()
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        for node in ast.walk(defs[fn]):
            found |= _project_modules(_targets(node, package))
            if isinstance(node, ast.Name) and node.id in defs:
                todo.append(node.id)
    return found


def closure(roots: list[str]) -> set[str]:
    """Libraries are followed into every function; the Kedro glue (pipelines, project) at module
    level only (its nodes' own imports are added by the caller for the nodes a stage runs)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        glue = name.startswith(("llama2_pipeline.pipelines", "llama2_pipeline.project"))
        todo += sorted(imports_of(name, inside_functions=not glue) - seen)
    return seen


def stage_modules(pipelines: list[str]) -> set[str]:
    """Every project module a ``kedro run --pipelines ...`` of these pipelines can import."""
    roots = list(RUNTIME)
    for p in pipelines:
        own = pipeline_modules(p)
        roots += own
        for name in own:  # the stage's own nodes, and the shared ones it wires
            roots += sorted(imports_of(name))
            tree, _ = _parse(name)
            used = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == SHARED for a in node.names}
            roots += sorted(function_imports(SHARED, used))
    return closure(roots)


def command_modules(module: str) -> set[str]:
    """What ``python -m module`` imports: its packages, the module and what they import."""
    parts = module.split(".")
    return closure([".".join(parts[:i]) for i in range(1, len(parts) + 1)])


def pipeline_modules(pipeline: str) -> list[str]:
    folder = PACKAGE / "pipelines" / pipeline
    return [f"llama2_pipeline.pipelines.{pipeline}.{p.stem}" for p in folder.glob("*.py")]


def stage_pipelines() -> dict[str, tuple[list[str], list[str]]]:
    """DVC stage -> (Kedro pipelines it runs, or ``["-m", module]`` for a ``python -m`` stage, its deps)."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    out = {}
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        cmd = body["cmd"].split()
        if "-m" in cmd:  # a command of the package (validate_params)
            pipelines = ["-m", cmd[cmd.index("-m") + 1]]
        else:
            pipelines = cmd[cmd.index("--pipelines") + 1].split(",")
            pipelines = ["rlhf" if p.startswith("rlhf_") else p for p in pipelines]
        out[name] = (pipelines, [d for d in body.get("deps", []) if isinstance(d, str)])
    return out


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stage_pipelines()))
def test_every_module_a_stage_imports_is_a_dependency(stage):
    pipelines, deps = stage_pipelines()[stage]
    modules = command_modules(pipelines[1]) if pipelines[0] == "-m" else stage_modules(pipelines)
    missing = sorted(module_file(m).relative_to(ROOT).as_posix() for m in modules if not covered(module_file(m), deps))
    assert not missing, f"dvc.yaml stage {stage!r} lacks deps for modules it imports: {missing}"
    files = {module_file(m) for m in modules}
    stale = [d for d in deps if d.startswith("src/") and not any(covered(f, [d]) for f in files)]
    assert not stale, f"dvc.yaml stage {stage!r} depends on code it does not import: {stale}"


def test_the_closure_follows_imports_inside_functions():
    """A module imported only inside a function (as the nodes do) still counts."""
    mods = stage_modules(["sft"])
    assert "llama2_pipeline.training.sft" in mods and "llama2_pipeline.evaluation.answers" in mods
    assert "llama2_pipeline.training.reward" not in mods  # a shared node the sft stage does not run
    assert "llama2_pipeline.training.ppo" not in stage_modules(["world"])
    assert "llama2_pipeline.training.reward" in stage_modules(["reward"])
