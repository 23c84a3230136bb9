"""``llama2-pipeline registry``: the recipe's models in the MLflow Model Registry, and the run behind one.

    llama2-pipeline registry                    # every alias of llama2-chat and the reward models, the champion and why
    llama2-pipeline registry --run-of champion  # the MLflow run that trained the champion (for make reproduce)
    llama2-pipeline registry --json

The ``registry`` stage (``dvc repro``, or ``kedro run --pipelines registry``) registers the models;
this command only reads (``sqlite:///<project>/mlflow.db`` unless ``--tracking-uri``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def describe(client, names: list[str]) -> list[dict]:
    """Each registered model with its aliases: version, run, stage and headline metrics."""
    out = []
    for name in names:
        model = client.get_registered_model(name)
        rows = []
        for alias, version in sorted(model.aliases.items(), key=lambda kv: int(kv[1])):
            v = client.get_model_version(name, version)
            rows.append({"alias": alias, "version": str(version), "run_id": v.tags.get("run_id"),
                         "stage": v.tags.get("stage"), "git_commit": v.tags.get("git_commit"),
                         "metrics": {k.removeprefix("metric."): float(x) for k, x in v.tags.items()
                                     if k.startswith("metric.")}})
        out.append({"name": name, "tags": dict(model.tags), "aliases": rows})
    return out


def run_of(client, alias: str, name: str) -> str:
    """The run id behind ``models:/<name>@<alias>`` (its ``run_id`` tag, else the version's run)."""
    v = client.get_model_version_by_alias(name, alias)
    run_id = v.tags.get("run_id") or v.run_id
    if not run_id or run_id == "none":
        raise LookupError(f"models:/{name}@{alias} (version {v.version}) names no MLflow run")
    return run_id


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from llama2_pipeline.pipelines.registry.register import CHAT, REWARD

    ap = argparse.ArgumentParser(prog="llama2-pipeline registry", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-of", metavar="ALIAS", help="print the MLflow run id behind models:/<--model>@ALIAS")
    ap.add_argument("--model", default=CHAT, help=f"registered model for --run-of (default {CHAT})")
    ap.add_argument("--project", default=".", help="the project folder (default: here)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<project>/mlflow.db)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    client = MlflowClient(tracking_uri=args.tracking_uri or f"sqlite:///{Path(args.project).resolve() / 'mlflow.db'}")
    try:
        if args.run_of:
            print(run_of(client, args.run_of, args.model))
            return 0
        models = describe(client, [CHAT, *REWARD.values()])
    except (MlflowException, LookupError) as e:
        print(f"llama2-pipeline registry: {getattr(e, 'message', e)} (has the registry stage run? "
              "`dvc repro registry`)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for m in models:
        print(m["name"])
        for a in m["aliases"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in a["metrics"].items() if k in ("helpfulness", "safety", "acc"))
            print(f"  @{a['alias']:<12} v{a['version']:<4} run {a['run_id']}  {shown}")
        if "champion_reason" in m["tags"]:
            print(f"  champion rule: {m['tags']['champion_rule']}\n  now: {m['tags']['champion_reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
