"""Nodes of ``registry``: register the model folders the recipe wrote (:mod:`.register`)."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.core.schema import to_plain
from llama2_pipeline.model.config import SamplingConfig

from .register import RegistryEntry, input_name


def register_models(entries: list[RegistryEntry], sampling: SamplingConfig | dict,
                    **inputs: Path | dict) -> tuple[dict, dict]:
    """Every entry's folder registered (inputs named by :func:`input_name` of its folder's and its
    metrics' catalog entries); returns ``registry.json`` (versions, aliases, the champion and why)
    and the flat ``metrics/registry.json``."""
    from .register import register_models as register

    folders = {e.dataset: inputs[input_name(e.dataset)] for e in entries}
    metrics = {e.metrics: inputs[input_name(e.metrics)] for e in entries}
    served = {k: to_plain(sampling)[k] for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    summary = register(entries, folders, metrics, served)
    champion, rows = summary["champion"], summary["models"]
    return summary, {"registry_champion_helpfulness": champion["metrics"].get("helpfulness"),
                     "registry_champion_safety": champion["metrics"].get("safety"),
                     "registry_versions": len(rows), "registry_new_versions": sum(r["new"] for r in rows)}
