"""Run a training module on several ranks: build the torchrun / DeepSpeed-launcher command line,
run it as a subprocess streaming its output, and forward the metrics rank 0 appends to
``run_dir/metrics.jsonl`` to a ``log_fn`` as they arrive (from the calling thread, so an MLflow
run active in the caller receives them).

The launched module must accept ``--config <run_config.json>`` (as
``python -m llama2_pipeline.training.pretrain`` does) and write its results into the run folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from .config import TrainConfig
from .engine import SINGLE_PROCESS_ENV, free_port
from .loop import METRICS_FILE

# launcher variables of an enclosing run that must not leak into the ranks we start
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID", SINGLE_PROCESS_ENV)


class LaunchError(RuntimeError):
    """The launched training processes failed (the message quotes the end of their output)."""


def launch_command(module: str, config_path: str | os.PathLike, cfg: TrainConfig) -> list[str]:
    """The command line that starts ``python -m module --config config_path`` on every rank.

    torchrun on one node uses ``--standalone``; with ``num_nodes > 1`` it is run once per node
    and reads ``NODE_RANK`` and ``MASTER_ADDR`` from the environment (set by the scheduler).
    The DeepSpeed launcher reads ``cfg.hostfile`` and starts every node itself (pdsh/ssh).
    """
    port = str(cfg.master_port or free_port())
    target = ["-m", module, "--config", str(config_path)]
    if cfg.launcher == "deepspeed":
        cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(cfg.world_size),
               "--num_nodes", str(cfg.num_nodes), "--master_port", port]
        if cfg.hostfile:
            cmd += ["--hostfile", str(cfg.hostfile)]
        return cmd + ["--module", module, "--config", str(config_path)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(cfg.world_size)]
    if cfg.num_nodes == 1:
        cmd += ["--standalone"]
    else:
        missing = [v for v in ("NODE_RANK", "MASTER_ADDR") if not os.environ.get(v)]
        if missing:
            raise ValueError(f"torchrun with num_nodes={cfg.num_nodes} is run once per node and needs "
                             f"{' and '.join(missing)} in the environment (or use launcher 'deepspeed' "
                             "with a hostfile)")
        cmd += ["--nnodes", str(cfg.num_nodes), "--node_rank", os.environ["NODE_RANK"],
                "--master_addr", os.environ["MASTER_ADDR"], "--master_port", port]
    return cmd + target


def launch(
    module: str,
    config_path: str | os.PathLike,
    cfg: TrainConfig,
    run_dir: str | os.PathLike,
    *,
    log_fn: Callable[[dict, int], None] | None = None,
    stream: TextIO | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run ``module`` on ``cfg.world_size`` x ``cfg.num_nodes`` ranks and wait for it.

    Output (stdout and stderr of every rank) is copied to ``stream`` (default ``sys.stdout``) as
    it comes; each new record of ``run_dir/metrics.jsonl`` goes to ``log_fn(metrics, step)``.
    Raises :class:`LaunchError` if the processes exit with a non-zero status.
    """
    stream = stream or sys.stdout
    cmd = launch_command(module, config_path, cfg)
    env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV}
    env.setdefault("PYTHONUNBUFFERED", "1")
    metrics_path = Path(run_dir) / METRICS_FILE
    tail: list[str] = []
    # a session of its own: on interruption the whole tree (launcher + ranks) is stopped
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)

    def pump() -> None:  # copy the ranks' output as it arrives (tqdm's \r updates included)
        while chunk := proc.stdout.read1(65536):
            text = chunk.decode("utf-8", errors="replace")
            stream.write(text)
            stream.flush()
            tail.append(text)
            del tail[:-200]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    forwarder = _MetricsForwarder(metrics_path, log_fn)
    try:
        while proc.poll() is None:
            forwarder.poll()
            time.sleep(poll_s)
    except BaseException:
        _stop(proc)
        raise
    reader.join(timeout=10)
    forwarder.poll()
    if proc.returncode != 0:
        raise LaunchError(f"{' '.join(cmd)} exited with status {proc.returncode}; last output:\n"
                          + "".join(tail)[-6000:])


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the launcher's process group (torchrun forwards it to the ranks), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


class _MetricsForwarder:
    """Forward each complete line of a growing ``metrics.jsonl`` once. A resumed run rewrites
    the file (keeping the steps up to its checkpoint); records seen before are not repeated."""

    def __init__(self, path: Path, log_fn):
        self.path, self.log_fn = path, log_fn
        self.offset = 0
        self.seen: set[str] = set()

    def poll(self) -> None:
        if self.log_fn is None or not self.path.is_file():
            return
        size = self.path.stat().st_size
        if size < self.offset:  # rewritten (truncated on resume)
            self.offset = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # only complete lines
        self.offset += end
        for line in data[:end].decode("utf-8", errors="replace").splitlines():
            if not line.strip() or line in self.seen:
                continue
            self.seen.add(line)
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            step = record.pop("step", 0)
            self.log_fn(record, step)


def read_run_config(path: str | os.PathLike, allowed: set[str], required: set[str]) -> dict[str, Any]:
    """Read and check a ``run_config.json`` of a launched CLI (unknown or missing keys raise,
    naming the file)."""
    path = Path(path)
    try:
        rc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"run config {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(rc, dict):
        raise ValueError(f"{path}: expected a JSON object")
    unknown = sorted(set(rc) - allowed)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    missing = sorted(required - set(rc))
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    return rc


def rank_main(argv: list[str] | None, prog: str, description: str, config_help: str,
              run: Callable[[str], dict]) -> int:
    """The command line of a stage's rank entry point (``python -m <module> --config run_config.json``,
    as :func:`launch` starts it): DeepSpeed's ``--local_rank`` passed on through ``$LOCAL_RANK``,
    logging, ``run(config_path)``, rank 0 prints the returned metrics as JSON, and the ranks leave
    the process group together (:func:`leave_process_group`)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help=argparse.SUPPRESS)  # passed by DeepSpeed's launcher (also in $LOCAL_RANK)
    args = p.parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    metrics = run(args.config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(metrics, indent=2))
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Wait for every rank, then destroy the default process group a launcher's ranks made. Left to
    the interpreter's exit, gloo's threads can be destroyed while they run ("terminate called
    without an active exception", SIGABRT), and a rank that finished its work exits as failed. A
    process's own world of one (:func:`.engine.init_distributed` without a launcher) is kept: the
    in-process runs after it reuse it, DeepSpeed holding its groups."""
    import torch.distributed as dist

    if os.environ.get(SINGLE_PROCESS_ENV) == "1":
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
