"""Reproduce a recorded run (e.g. one RLHF round) from its MLflow run id and check its outputs.

    python -m llama2_pipeline.commands.reproduce <run id>        # or: make reproduce RUN=<run id>

From the run's record it restores, in a fresh git worktree (a temporary folder):

* the code version: the ``git_commit`` tag (a run recorded with uncommitted changes to tracked
  files, ``git_dirty=true``, is reproduced from its commit with a warning);
* the params: the run's own ``params.yaml`` when it differed from the commit (recorded as the
  artifact ``provenance/params.yaml``, as under ``dvc exp run --set-param``), else that commit's,
  with the recorded ``profile``, Kedro environment and ``--params`` overrides; every parameter the
  run logged must equal the worktree's, else it stops naming each differing key (e.g. one set by a
  ``conf/local/parameters.yml`` that is not in git);
* the inputs: each ``input.<dataset>`` tag is ``path@sha256:<digest>``; the file or folder is
  copied from this project if its digest still matches (``dvc checkout`` an older version first
  if it does not), else it stops naming the path;

then runs the same pipelines (``kedro run --pipelines <the run's pipelines>``) there and compares
every output's digest with the recorded ``output.<dataset>`` tag. It succeeds when the models the
run wrote (datasets named ``policy`` or ``*_model*``, e.g. an RLHF round's policy) are
bitwise identical; other outputs are listed as matching or not (reports that contain timings
differ by nature). Before it runs, it compares the run's recorded environment (``env.*`` tags)
with this machine's and says whether bitwise equality is to be expected
(:func:`~llama2_pipeline.project.environment.bitwise_expected`): the same package versions, torch
CPU kernel level, MKL code path and thread count. Exit code 0 on success, 1 on a mismatch, 2 when
the run cannot be restored.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from llama2_pipeline.core.files import sha256_path
from llama2_pipeline.project.provenance import recorded_params_file

log = logging.getLogger(__name__)


class ReproduceError(RuntimeError):
    """The run cannot be restored (unknown run, missing tag, changed input, differing params)."""


def _is_model(dataset: str) -> bool:
    name = dataset.rsplit(".", 1)[-1]
    return name == "policy" or "_model" in name


def _git(args: list[str], cwd: Path) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise ReproduceError(f"git {' '.join(args)} failed: {p.stderr.strip()}")
    return p.stdout


def check_params(recorded: dict[str, str], params_file: Path, profile: str, overrides: dict | None = None,
                 source: str = "commit's params.yaml") -> None:
    """Every parameter MLflow recorded equals the resolved ``params_file`` under ``profile`` and the
    run's ``--params`` ``overrides``; otherwise a ReproduceError names each differing key."""
    from llama2_pipeline.core.schema import flatten
    from llama2_pipeline.recipe import ParamsError, load

    try:
        flat = flatten(load(params_file, profile=profile, overrides=overrides).to_dict())
    except ParamsError as e:
        raise ReproduceError(f"the run's parameters cannot be read by this version: {e}") from None
    diffs = []
    for key, value in sorted(recorded.items()):
        if key in flat and str(flat[key]) != value and _normal(flat[key]) != _normal(value):
            diffs.append(f"{key}: recorded {value!r}, the {source} gives {flat[key]!r}")
    if diffs:
        raise ReproduceError(f"{len(diffs)} of the run's parameters differ from the {source} (set by a Kedro "
                             "environment's parameters, e.g. conf/local/parameters.yml, which git does not keep):"
                             "\n  " + "\n  ".join(diffs[:20]))


def kedro_params(overrides: dict) -> str:
    """``kedro run --params`` text of the recorded overrides (dotted keys, YAML values)."""
    from llama2_pipeline.core.schema import flatten

    items = []
    for key, value in sorted(flatten(overrides).items()):
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        if "," in text or "=" in text:
            raise ReproduceError(f"the run's --params override {key}={text} cannot be passed to kedro run again "
                                 "(a comma or '=' in the value)")
        items.append(f"{key}={text}")
    return ",".join(items)


def environment_check(tags: dict[str, str]) -> tuple[bool, list[str]]:
    """Whether this machine can give the run's bits (:func:`bitwise_expected`) and why not."""
    import torch  # noqa: F401 (so that the environment includes torch's CPU kernel level and threads)

    from llama2_pipeline.project.environment import bitwise_expected, environment

    return bitwise_expected(tags, environment())


def _normal(value: Any) -> Any:
    """A recorded string and a YAML value compared as data where possible ("1e-05" vs 1.0e-5)."""
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return float(value)


def restore_inputs(tags: dict[str, str], project: Path, target: Path) -> list[str]:
    """Copy each recorded input (by digest) from ``project`` into ``target``; returns the paths."""
    restored = []
    for tag, value in sorted(tags.items()):
        if not tag.startswith("input.") or "@" not in value or tag.endswith("_workspace"):
            continue  # (checkpoint workspaces are scratch: the rerun starts afresh)
        rel, digest = value.rsplit("@", 1)
        digest = digest.removeprefix("sha256:")
        source = project / rel
        if not source.exists():
            raise ReproduceError(f"input {tag[6:]!r} ({rel}) is not in {project}: restore it "
                                 f"(e.g. `dvc checkout` at the commit that wrote it), digest {digest}")
        actual = sha256_path(source)
        if actual != digest:
            raise ReproduceError(f"input {tag[6:]!r} ({rel}) has changed since the run: recorded {digest}, "
                                 f"now {actual}; check out the version the run read first")
        dest = target / rel
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest)
        else:
            shutil.copy2(source, dest)
        restored.append(rel)
    return restored


def compare_outputs(tags: dict[str, str], workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for tag, value in sorted(tags.items()):
        if not tag.startswith("output.") or "@" not in value:
            continue
        rel, digest = value.rsplit("@", 1)
        digest = digest.removeprefix("sha256:")
        produced = workdir / rel
        now = sha256_path(produced) if produced.exists() else None
        rows.append({"dataset": tag[7:], "path": rel, "recorded": digest, "reproduced": now,
                     "match": now == digest, "model": _is_model(tag[7:])})
    return rows


def reproduce(run_id: str, *, project: str | os.PathLike = ".", tracking_uri: str | None = None,
              workdir: str | os.PathLike | None = None, keep: bool = False) -> dict[str, Any]:
    """Rerun ``run_id`` from its record; returns ``{"ok", "outputs", "workdir", ...}`` (see the module doc)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    project = Path(project).resolve()
    client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{project / 'mlflow.db'}")
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise ReproduceError(f"no MLflow run {run_id!r} in {client.tracking_uri}: {e.message}") from None
    tags, params = run.data.tags, run.data.params
    missing = [t for t in ("git_commit", "pipelines", "profile") if t not in tags]
    if missing:
        raise ReproduceError(f"run {run_id} lacks the tag(s) {missing}: it was not recorded by this project's "
                             "lineage hook")
    commit, pipelines, profile = tags["git_commit"], tags["pipelines"], tags["profile"]
    if tags.get("git_dirty") == "true" and tags.get("params_modified") != "true":
        log.warning("run %s was recorded with uncommitted changes to tracked files; reproducing commit %s",
                    run_id, commit[:12])
    expected, env_diffs = environment_check(tags)
    overrides = json.loads(tags["params_overrides"]) if tags.get("params_overrides") else {}
    overrides.pop("profile", None)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"reproduce-{run_id[:8]}-"))
    if work.exists() and any(work.iterdir()):
        raise ReproduceError(f"work folder {work} is not empty")
    work.rmdir() if work.exists() else None
    _git(["worktree", "add", "--detach", str(work), commit], project)
    try:
        source = "commit's params.yaml"
        try:
            if recorded_params_file(client, run_id, work / "params.yaml") is not None:
                source = "run's recorded params.yaml"
        except (MlflowException, OSError, ValueError) as e:
            raise ReproduceError(f"the run's params.yaml (artifact provenance/params.yaml) cannot be restored: {e}") \
                from None
        check_params(params, work / "params.yaml", profile, overrides, source)
        inputs = restore_inputs(tags, project, work)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(work / "src"), os.environ.get("PYTHONPATH", "")]),
               "DO_NOT_TRACK": "true", "DVC_NO_ANALYTICS": "1"}
        env.pop("LLAMA2_REPRO_GROUP", None)
        where = subprocess.run([sys.executable, "-c", "import llama2_pipeline; print(llama2_pipeline.__file__)"],
                               cwd=work, env=env, capture_output=True, text=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(work.resolve()):
            raise ReproduceError(f"the worktree's code is shadowed by {where}")
        extra = kedro_params(overrides)
        cmd = ["kedro", "run", "--pipelines", pipelines, "--params", f"profile={profile}" + (f",{extra}" if extra else "")]
        if tags.get("kedro_env") not in (None, "None", "local"):
            cmd += ["--env", tags["kedro_env"]]
        log.info("reproducing run %s: %s at %s in %s", run_id, " ".join(cmd), commit[:12], work)
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise ReproduceError(f"`{' '.join(cmd)}` failed in {work}:\n{p.stderr[-4000:]}")
        outputs = compare_outputs(tags, work)
        models = [o for o in outputs if o["model"]]
        ok = bool(models) and all(o["match"] for o in models)
        return {"ok": ok, "run_id": run_id, "commit": commit, "pipelines": pipelines, "profile": profile,
                "params_source": source, "dvc_exp_name": tags.get("dvc_exp_name"), "inputs": inputs,
                "outputs": outputs, "bitwise_expected": expected, "environment_differences": env_diffs,
                "workdir": str(work) if keep else None}
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(work)], cwd=project, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llama2_pipeline.commands.reproduce",
                                 description="Rerun a recorded run (e.g. an RLHF round) from its MLflow run id and "
                                             "check that it writes the same models, bit for bit.")
    ap.add_argument("run_id", help="the MLflow run id (mlflow ui: the run's page)")
    ap.add_argument("--project", default=".", help="the project folder (default: here)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<project>/mlflow.db)")
    ap.add_argument("--workdir", help="where to check the commit out (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = reproduce(args.run_id, project=args.project, tracking_uri=args.tracking_uri, workdir=args.workdir,
                           keep=args.keep)
    except ReproduceError as e:
        print(f"cannot reproduce: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        exp = f", experiment {report['dvc_exp_name']}" if report["dvc_exp_name"] else ""
        print(f"run {report['run_id']} ({report['pipelines']}, profile {report['profile']}{exp}) at commit "
              f"{report['commit'][:12]} with the {report['params_source']}; {len(report['inputs'])} inputs restored "
              "by digest")
        if report["bitwise_expected"]:
            print("bitwise equality expected: same packages, CPU kernel level, MKL code path and threads as recorded")
        else:
            print("bitwise equality NOT expected on this machine:\n  " + "\n  ".join(report["environment_differences"]))
        for o in report["outputs"]:
            mark = "same" if o["match"] else "DIFFERENT"
            print(f"  {mark:9} {'model ' if o['model'] else '      '}{o['dataset']} ({o['path']})")
        print("reproduced: the models are bitwise identical" if report["ok"]
              else "NOT reproduced: a model differs from the recorded one" + (
                  "" if report["bitwise_expected"] else " (as the environment differences above lead to expect)"))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
