"""Package exports imported on first use (PEP 562): importing ``llama2_pipeline.model`` or
``llama2_pipeline.training`` costs nothing until a name is used, so Kedro can register every
pipeline (and validate every params group) without importing torch for stages that never need it."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, names: dict[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``names`` maps an exported name to the submodule
    defining it; the first access imports the submodule and caches the name in ``namespace``."""
    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
