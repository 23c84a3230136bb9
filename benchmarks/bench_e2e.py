"""Time the whole recipe as a user runs it: ``dvc repro`` from nothing, stage by stage, then a
second ``dvc repro`` that must find nothing to do.

By default the project's working tree (tracked and untracked-not-ignored files, no outputs) is
copied to a fresh folder with the chosen profile, made a git repository and reproduced there,
so the figure includes everything a first run pays: Python and Kedro start-up per stage,
DeepSpeed engines, MLflow's sqlite store being created. ``--in-place`` instead forces every
stage of this project (``dvc repro --force``).

Printed: seconds per stage (from DVC's "Running stage" lines as they stream), the total, the
no-op rerun, and the ratio of the total to the budget (the issue's peer figure: 10 minutes on
2 cores). ``--out`` writes the same as JSON.

    python benchmarks/bench_e2e.py                      # default profile, fresh copy under /tmp
    python benchmarks/bench_e2e.py --profile smoke --out e2e_smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def copy_project(dest: Path, profile: str) -> Path:
    """The working tree's files (what git tracks or would track; no outputs, stores or venv)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_symlink():  # conf/base/parameters.yml -> params.yaml stays a link to the copy's params
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).symlink_to(os.readlink(src))
        elif src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = dest / "params.yaml"
    text = params.read_text()
    if "\nprofile: default" not in text:
        raise SystemExit("params.yaml has no top-level 'profile: default' line to switch")
    params.write_text(text.replace("\nprofile: default", f"\nprofile: {profile}", 1))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    subprocess.run("git init -q && git add -A", cwd=dest, shell=True, check=True)
    subprocess.run(git + ["commit", "-qm", "bench snapshot"], cwd=dest, check=True)
    return dest


def env() -> dict:
    e = dict(os.environ)
    e.update(DO_NOT_TRACK="true", DVC_NO_ANALYTICS="1", KEDRO_DISABLE_TELEMETRY="true", PYTHONHASHSEED="0",
             PATH=f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}")
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def timed_repro(project: Path, args: list[str], log: Path) -> tuple[float, list[tuple[str, float]]]:
    """Run ``dvc repro`` streaming its output to ``log``; (total seconds, [(stage, seconds)])."""
    t0 = time.perf_counter()
    marks: list[tuple[str, float]] = []
    with open(log, "w") as f:
        p = subprocess.Popen(["dvc", "repro", *args], cwd=project, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in p.stdout:
            f.write(line)
            if m := STAGE_LINE.match(line):
                marks.append((m.group(1), time.perf_counter()))
                print(f"  {time.perf_counter() - t0:7.1f} s  {m.group(1)}", flush=True)
        rc = p.wait()
    total = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"dvc repro failed (exit {rc}); its output: {log}")
    ends = [t for _, t in marks[1:]] + [t0 + total]
    return total, [(name, end - start) for (name, start), end in zip(marks, ends)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="default")
    p.add_argument("--workdir", default=None, help="where the fresh copy goes (default: a temporary folder)")
    p.add_argument("--in-place", action="store_true", help="force every stage of this project instead")
    p.add_argument("--budget-s", type=float, default=600.0, help="the peer figure: the issue's 10 minutes")
    p.add_argument("--keep", action="store_true", help="keep the fresh copy")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    tmp = None
    if args.in_place:
        project, first_args = ROOT, ["--force"]
    else:
        tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="llama2-e2e-"))
        tmp.mkdir(parents=True, exist_ok=True)
        project, first_args = copy_project(tmp / "project", args.profile), []
    print(f"dvc repro in {project} (profile {args.profile}, {os.cpu_count()} CPUs)", flush=True)
    total, stages = timed_repro(project, first_args, project / "e2e_first.log")
    noop, _ = timed_repro(project, [], project / "e2e_second.log")
    second_log = (project / "e2e_second.log").read_text()
    res = {"profile": args.profile, "cpus": os.cpu_count(), "python": platform.python_version(),
           "project": str(project), "total_s": round(total, 1), "noop_rerun_s": round(noop, 1),
           "noop_rerun_ran_stages": STAGE_LINE.search(second_log) is not None,
           "budget_s": args.budget_s, "total_over_budget": round(total / args.budget_s, 3),
           "stages": [{"stage": s, "seconds": round(t, 1)} for s, t in stages]}
    print(f"\n{'stage':<20} {'seconds':>8} {'share':>6}")
    for s, t in stages:
        print(f"{s:<20} {t:8.1f} {t / total:6.1%}")
    print(f"{'total':<20} {total:8.1f}   ({total / 60:.1f} min; budget {args.budget_s:.0f} s -> "
          f"{total / args.budget_s:.2f}x of it)")
    print(f"{'second dvc repro':<20} {noop:8.1f}   ({'ran stages!' if res['noop_rerun_ran_stages'] else 'nothing to do'})")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    if tmp is not None and not args.keep and not args.workdir:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
