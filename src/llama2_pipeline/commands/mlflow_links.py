"""``llama2-pipeline mlflow-links``: the mlflow ui pages to open, printed by ``make mlflow-ui``.

    llama2-pipeline mlflow-links [--port 5000]

MLflow 3's UI opens an experiment on its GenAI overview (traces, judges) unless the page asks for
training runs (``workflowType=machine_learning``; the UI then stays in that mode), and nests the
runs of one ``dvc repro`` under its parent run, collapsed. The links:

* training runs: every stage's run, flat, the newest first;
* the RLHF rounds side by side: the latest finished run of each round of ``rlhf.rounds``, one row
  each, with the metrics every round has under the same name (``policy_helpfulness``,
  ``policy_safety``, ``win_rate_vs_sft``, ``kl_to_sft``, ...) as columns. The view is saved as a
  shared view of the experiment (the tag ``mlflow.sharedViewState.rlhf-rounds``, what the UI's own
  "Share" writes), brought up to date each time this command runs;
* the same rounds on MLflow's compare page (every parameter and metric, one column per round);
* the registered chat models (``llama2-chat``, its aliases and ``champion``), once registered.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from urllib.parse import quote

ML = "workflowType=machine_learning"
SHARED_VIEW = "mlflow.sharedViewState."  # the UI's experiment tag for a shared runs-table view
ROUNDS_VIEW = "rlhf-rounds"
#: the rounds' metrics shown as columns (those every round has; the UI orders them by name)
ROUND_COLUMNS = ("policy_helpfulness", "policy_safety", "win_rate_vs_sft", "kl_to_sft", "rm_helpfulness_acc")


def round_runs(client, experiment_id: str, rounds: list[str]) -> list[str]:
    """The latest finished run of each round (tag ``pipelines`` = ``rlhf_<round>``), in round order."""
    ids = []
    for r in rounds:
        found = client.search_runs([experiment_id], f"tags.pipelines = 'rlhf_{r}' and attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        ids += [found[0].info.run_id] if found else []
    return ids


def rounds_view(client, experiment_id: str, run_ids: list[str]) -> dict:
    """The runs table of the rounds' runs (flat: a filter and an order other than the start time
    keep MLflow from nesting them under their parent), the metrics all of them have as columns."""
    runs = [client.get_run(r) for r in run_ids]
    shared = set.intersection(*(set(r.data.metrics) for r in runs))
    columns = [m for m in ROUND_COLUMNS if m in shared]
    ids = ", ".join(f"'{r}'" for r in run_ids)
    return {"searchFilter": f"attributes.run_id IN ({ids})", "orderByKey": "attributes.run_name", "orderByAsc": True,
            "selectedColumns": [f"metrics.`{m}`" for m in columns]}


def links(client, experiment: str, rounds: list[str], base: str) -> dict[str, str]:
    """Page name -> URL on the mlflow ui at ``base`` (saves the rounds' view, see the module doc)."""
    from mlflow.exceptions import MlflowException

    from llama2_pipeline.pipelines.registry.register import CHAT

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    page = f"{base}/#/experiments/{exp.experiment_id}/runs?{ML}"
    out = {"training runs": f"{page}&orderByKey=attributes.end_time&orderByAsc=false"}
    ids = round_runs(client, exp.experiment_id, rounds)
    if ids:
        client.set_experiment_tag(exp.experiment_id, f"{SHARED_VIEW}{ROUNDS_VIEW}",
                                  json.dumps(rounds_view(client, exp.experiment_id, ids)))
        out["RLHF rounds side by side"] = f"{page}&viewStateShareKey={ROUNDS_VIEW}"
        out["RLHF rounds, every metric"] = (f"{base}/#/compare-runs?runs={quote(json.dumps(ids))}"
                                            f"&experiments={quote(json.dumps([exp.experiment_id]))}&{ML}")
    try:
        client.get_registered_model(CHAT)
        out["registered chat models"] = f"{base}/#/models/{CHAT}?{ML}"
    except MlflowException:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    from llama2_pipeline.recipe import PARAMS_FILE, load

    ap = argparse.ArgumentParser(prog="llama2-pipeline mlflow-links", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--project", default=".", help="the project folder (default: here)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<project>/mlflow.db)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    project = Path(args.project).resolve()
    recipe = load(project / PARAMS_FILE)
    client = MlflowClient(tracking_uri=args.tracking_uri or f"sqlite:///{project / 'mlflow.db'}")
    pages = links(client, recipe.tracking.experiment, [str(r) for r in recipe.rlhf.rounds],
                  f"http://{args.host}:{args.port}")
    if args.json:
        print(json.dumps(pages, indent=2))
    elif not pages:
        print(f"no MLflow experiment {recipe.tracking.experiment!r} in {client.tracking_uri} yet: run the pipeline first")
    else:
        width = max(map(len, pages))
        print("\n".join(f"{name + ':':<{width + 1}} {url}" for name, url in pages.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
