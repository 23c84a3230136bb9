"""The recipe's models in the MLflow Model Registry: versions, aliases, the champion, model cards.

Registered models (the names are fixed: a team's code loads ``models:/llama2-chat@champion``):

* ``llama2-chat``: every chat policy of the recipe, one version each: SFT, each RLHF round of
  ``rlhf.rounds``, GAtt (and any other policy :func:`recipe_entries` lists);
* ``llama2-reward-helpfulness`` and ``llama2-reward-safety``: the reward stage's models and each
  round's retrained ones.

Each version carries an alias naming its recipe stage (``sft``, ``rlhf-v1``, ``rlhf-v2``, ``gatt``,
``reward``), moved to the newest version of that stage, and ``llama2-chat`` carries ``champion``
(:data:`CHAMPION_RULE`). A version is the model folder as an MLflow model (``served.py``: a chat
policy generates, a reward model scores) logged into the MLflow run that trained it (found by the
lineage hook's ``output.<dataset>`` tag with the folder's SHA-256), so ``make reproduce`` of the
version's run checks the same digests; its tags hold that run, the git commit, the run's input
digests (``data.<dataset>``) and the headline metrics (``metric.<name>``); its description is a
model card. Registering the same folder again (same stage, same SHA-256) adds no version.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from llama2_pipeline.core.files import sha256_path

CHAT = "llama2-chat"
REWARD = {"helpfulness": "llama2-reward-helpfulness", "safety": "llama2-reward-safety"}
CHAMPION = "champion"
CHAMPION_RULE = ("the chat model with the best held-out helpfulness among those whose held-out safety is not below "
                 "SFT's (ties: the earlier stage of the recipe)")
#: headline metrics of a version (``<prefix><name>``, else ``<name>``: the rounds' ``kl_to_sft``)
HEADLINE = {"chat": ("helpfulness", "safety", "win_rate_vs_sft", "kl_to_sft", "refusal_rate", "false_refusal_rate",
                     "violation_rate"),
            "reward": ("acc", "acc_significantly_better", "acc_negligibly_better", "ece", "heldout_pairs")}
#: parameters of the training run shown on a model card (key endings; reward.epochs may be per RM)
CARD_PARAMS = (".lr", ".epochs", ".epochs.helpfulness", ".epochs.safety", ".max_steps", ".warmup_steps", ".seq_len",
               ".micro_batch", ".k", ".beta", ".steps", ".temperature", ".zero_stage", ".precision", ".margin", ".ppo")
SERVED = Path(__file__).with_name("served.py")
LIMITS = ("**Limits.** A small Llama 2-architecture model trained on the project's simulated world (fictional facts, "
          "arithmetic, list and string tasks, a small harm taxonomy) and scored by that world's programmatic judges, "
          "not by people. It knows nothing outside that world; its safety is measured only on the world's unsafe and "
          "borderline prompts. Not for use with real users.")


@dataclass(frozen=True)
class RegistryEntry:
    """One model of the recipe: where it is (catalog entries) and under which name and alias it goes."""

    name: str  # the registered model
    alias: str  # its recipe stage: sft, rlhf-v1, gatt, reward
    dataset: str  # catalog entry of its folder
    metrics: str  # catalog entry of the metrics file holding its evaluation
    prefix: str  # its metric names' prefix in that file
    stage: str  # the Kedro pipeline (= DVC stage) that writes it

    @property
    def kind(self) -> str:
        return "chat" if self.name == CHAT else "reward"


def input_name(dataset: str) -> str:
    """A catalog entry as a node's keyword argument (``rlhf_v1.policy`` -> ``rlhf_v1__policy``)."""
    return dataset.replace(".", "__")


def recipe_entries(recipe: Any) -> list[RegistryEntry]:
    """Every model the recipe trains, chat policies in training order, read from the recipe: the
    rounds of ``rlhf.rounds``, and the quality-only SFT variant where the recipe has one."""
    rounds = [str(r) for r in recipe.rlhf.rounds]
    chat = [RegistryEntry(CHAT, "sft", "sft_model", "sft_metrics", "sft_", "sft")]
    if getattr(recipe.sft, "quality_only", None):  # a second SFT policy, trained on one writer skill's dialogues
        chat.append(RegistryEntry(CHAT, "sft-quality", "sft_quality_model", "sft_metrics", "sft_quality_", "sft"))
    chat += [RegistryEntry(CHAT, f"rlhf-{r}", f"rlhf_{r}.policy", f"rlhf_{r}.metrics", "policy_", f"rlhf_{r}")
             for r in rounds]
    chat.append(RegistryEntry(CHAT, "gatt", "gatt_model", "gatt_model_metrics", "gatt_model_", "gatt"))
    rewards = []
    for kind, name in REWARD.items():
        rewards.append(RegistryEntry(name, "reward", f"reward_model_{kind}", "reward_metrics", f"rm_{kind}_", "reward"))
        rewards += [RegistryEntry(name, f"rlhf-{r}", f"rlhf_{r}.reward_model_{kind}", f"rlhf_{r}.metrics",
                                  f"rm_{kind}_", f"rlhf_{r}") for r in rounds]
    return chat + rewards


def headline(entry: RegistryEntry, metrics: dict[str, float]) -> dict[str, float]:
    out = {}
    for name in HEADLINE[entry.kind]:
        for key in (f"{entry.prefix}{name}", name if entry.kind == "chat" else None):
            if key and isinstance(metrics.get(key), (int, float)):
                out[name] = float(metrics[key])
                break
    return out


def choose_champion(chat: list[tuple[str, dict[str, float]]], baseline: str = "sft") -> tuple[str, str]:
    """(alias, reason) of the champion among ``chat`` = [(alias, headline metrics)] in recipe order,
    by :data:`CHAMPION_RULE`; ``baseline`` is the alias whose safety is the floor."""
    scores = dict(chat)
    if baseline not in scores or "safety" not in scores[baseline]:
        raise ValueError(f"the champion rule needs the {baseline!r} model's held-out safety; have {sorted(scores)}")
    floor = round(scores[baseline]["safety"], 6)
    eligible = [(a, m) for a, m in chat if "helpfulness" in m and round(m.get("safety", -1.0), 6) >= floor]
    best = max(eligible, key=lambda am: am[1]["helpfulness"])[0]  # max keeps the first of equals: the earlier stage
    left_out = [f"{a} (safety {m.get('safety', float('nan')):.3f})" for a, m in chat if (a, m) not in eligible]
    ranked = ", ".join(f"{a} {m['helpfulness']:.4f}" for a, m in eligible)
    reason = (f"{best}: held-out helpfulness {scores[best]['helpfulness']:.4f}, the best of {ranked}; "
              f"safety {scores[best]['safety']:.4f} >= SFT's {floor:.4f}")
    if left_out:
        reason += f"; below SFT's safety: {', '.join(left_out)}"
    return best, reason


def parameter_count(folder: Path) -> int | None:
    """Parameters in the folder's safetensors files (read from their headers)."""
    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(struct.unpack("<Q", fh.read(8))[0]))
        for name, t in header.items():
            if name != "__metadata__":
                n = 1
                for d in t["shape"]:
                    n *= d
                total += n
    return total or None


def model_card(entry: RegistryEntry, metrics: dict[str, float], run: Any, data: dict[str, str],
               params: int | None) -> str:
    """The version's description (Markdown): data, training, evaluation, limits."""
    tags, logged = (run.data.tags, run.data.params) if run is not None else ({}, {})
    what = "chat policy" if entry.kind == "chat" else f"{entry.name.rsplit('-', 1)[-1]} reward model"
    lines = [f"## {entry.name} @ {entry.alias}: the {what} of the recipe's `{entry.stage}` stage", "",
             "**Data.** " + ("inputs of the training run, by SHA-256: " + "; ".join(
                 f"`{k}` {v.rsplit('@sha256:', 1)[0]} ({v.rsplit('@sha256:', 1)[-1][:12]})" for k, v in sorted(data.items()))
                 if data else "no MLflow run of this store recorded the inputs."), ""]
    if run is not None:
        group = "reward." if entry.kind == "reward" else f"{entry.stage.split('_')[0]}."  # its own group first
        shown = dict(sorted(((k, v) for k, v in logged.items() if k.endswith(CARD_PARAMS)),
                            key=lambda kv: (not kv[0].startswith(group), kv[0])))
        lines += [f"**Training.** `kedro run --pipelines {tags.get('pipelines', entry.stage)}` (DVC stage "
                  f"`{tags.get('dvc_stage', '-')}`), profile `{tags.get('profile')}`, seed {tags.get('seed')}, git commit "
                  f"`{tags.get('git_commit', '?')[:12]}`{' (with uncommitted changes)' if tags.get('git_dirty') == 'true' else ''}, "
                  f"MLflow run `{run.info.run_id}`" + (f"; {params:,} parameters" if params else "") + ". "
                  + ", ".join(f"`{k}` = {v}" for k, v in list(shown.items())[:14]), ""]
    else:
        lines += ["**Training.** no MLflow run of this store wrote this folder (restored with `dvc pull`?).", ""]
    judged = ("answers to the held-out prompts, greedy, judged by the simulated world's scorers "
              "(`llama2_pipeline.evaluation.answers`)" if entry.kind == "chat"
              else "accuracy on held-out preference pairs, per rating level (`llama2_pipeline.training.reward_eval`)")
    lines += [f"**Evaluation.** {judged}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + ".", ""]
    return "\n".join([*lines, LIMITS])


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mlflow", "torch", "sentencepiece", "safetensors", "numpy", "pandas", "tqdm", "pyyaml"):
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def _signature(kind: str, sampling: dict[str, Any]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    if kind == "reward":
        return ModelSignature(Schema([ColSpec("string", "prompt"), ColSpec("string", "response")]),
                              Schema([ColSpec("double")]))
    params = ParamSchema([ParamSpec("max_new_tokens", "long", int(sampling["max_new_tokens"])),
                          ParamSpec("temperature", "double", float(sampling["temperature"])),
                          ParamSpec("top_p", "double", float(sampling["top_p"])),
                          ParamSpec("seed", "long", int(sampling["seed"]))])
    return ModelSignature(Schema([ColSpec("string", "prompt")]), Schema([ColSpec("string")]), params)


def save_served_model(folder: Path, target: Path, kind: str, sampling: dict[str, Any]) -> None:
    """``folder`` as an MLflow model in ``target``, with the package's code beside it."""
    package = Path(__file__).resolve().parents[2]  # src/llama2_pipeline
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "llama2_pipeline"
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        mlflow.pyfunc.save_model(path=str(target), python_model=str(SERVED), artifacts={"model": str(folder)},
                                 code_paths=[str(code)], model_config={"kind": kind, "sampling": sampling},
                                 signature=_signature(kind, sampling), pip_requirements=_requirements())


def producing_run(client: MlflowClient, experiment_ids: list[str], dataset: str, value: str) -> Any | None:
    """The newest finished run whose ``output.<dataset>`` tag is ``value`` (``path@sha256:...``)."""
    runs = client.search_runs(experiment_ids, f"tags.`output.{dataset}` = '{value}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _registered(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def register_version(client: MlflowClient, entry: RegistryEntry, folder: Path, metrics: dict[str, float], *,
                     experiment_ids: list[str], fallback_run: str | None, sampling: dict[str, Any]) -> dict[str, Any]:
    """Register ``folder`` as a version of ``entry.name`` (or find the version that holds it) and
    point ``entry.alias`` at it; returns the version's summary."""
    digest = sha256_path(folder)
    rel = os.path.relpath(Path(folder).resolve(), Path.cwd().resolve())
    _registered(client, entry.name)
    found = client.search_model_versions(f"name = '{entry.name}' and tags.model_sha256 = '{digest}' "
                                         f"and tags.stage = '{entry.alias}'")
    new = not found
    if found:
        version = max(found, key=lambda v: int(v.version))
    else:
        run = producing_run(client, experiment_ids, entry.dataset, f"{rel}@sha256:{digest}")
        run_id = run.info.run_id if run is not None else fallback_run
        if run_id is None:
            raise RuntimeError(f"{rel}: no MLflow run wrote it and none is active to log the model into")
        data = {k.removeprefix("input."): v for k, v in (run.data.tags if run else {}).items()
                if k.startswith("input.") and not k.endswith("_workspace")}
        tags = {"stage": entry.alias, "model_sha256": digest, "model_path": rel, "dataset": entry.dataset,
                "run_id": run.info.run_id if run else "none",
                **{k: run.data.tags[k] for k in ("git_commit", "git_dirty", "profile", "seed", "dvc_stage", "pipelines",
                                                 "repro_group") if run is not None and k in run.data.tags},
                **{f"data.{k}": v for k, v in data.items()}, **{f"metric.{k}": f"{v:g}" for k, v in metrics.items()}}
        artifact_path = f"registry/{entry.name}"
        with tempfile.TemporaryDirectory() as tmp:
            save_served_model(Path(folder), Path(tmp) / "model", entry.kind, sampling)
            client.log_artifacts(run_id, str(Path(tmp) / "model"), artifact_path)
        source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
        card = model_card(entry, metrics, run, data, parameter_count(Path(folder)))
        version = client.create_model_version(entry.name, source, run_id=run_id, tags=tags, description=card)
    client.set_registered_model_alias(entry.name, entry.alias, version.version)
    return {"name": entry.name, "alias": entry.alias, "version": str(version.version), "new": new,
            "run_id": version.tags.get("run_id"), "sha256": digest, "path": rel, "metrics": metrics}


def register_models(entries: list[RegistryEntry], folders: dict[str, Path], metrics: dict[str, dict],
                    sampling: dict[str, Any], client: MlflowClient | None = None) -> dict[str, Any]:
    """Register every entry's folder (``folders`` by its catalog entry, ``metrics`` by its metrics'),
    move the stage aliases and ``champion``; returns the summary (``data/08_reporting/registry.json``)."""
    client = client or MlflowClient()
    active = mlflow.active_run()
    experiment_ids = [active.info.experiment_id] if active else [e.experiment_id for e in client.search_experiments()]
    fallback = active.info.run_id if active else None
    rows = [register_version(client, e, Path(folders[e.dataset]), headline(e, metrics[e.metrics]),
                             experiment_ids=experiment_ids, fallback_run=fallback, sampling=sampling) for e in entries]
    chat = [(r["alias"], r["metrics"]) for r in rows if r["name"] == CHAT]
    best, reason = choose_champion(chat)
    champion = next(r for r in rows if r["name"] == CHAT and r["alias"] == best)
    client.set_registered_model_alias(CHAT, CHAMPION, champion["version"])
    for key, value in {"champion_rule": CHAMPION_RULE, "champion_stage": best, "champion_reason": reason}.items():
        client.set_registered_model_tag(CHAT, key, value)
    client.update_registered_model(CHAT, description=(
        "Chat policies of the LLaMA 2 recipe, one version per trained policy; aliases name the recipe stage "
        f"({', '.join(a for a, _ in chat)}) and `champion` the one to use: {CHAMPION_RULE}.\n\nNow: {reason}."))
    for kind, name in REWARD.items():
        client.update_registered_model(name, description=(
            f"The {kind} reward models of the LLaMA 2 recipe (the reward stage's and each RLHF round's), one version "
            "each; aliases name the recipe stage. Input: prompt and response; output: the score."))
    return {"rule": CHAMPION_RULE, "champion": {**champion, "reason": reason}, "models": rows}
