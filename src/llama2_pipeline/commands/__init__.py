"""``llama2-pipeline``: the project's own commands (Kedro and DVC run the stages themselves).

(Not ``cli.py``: Kedro would load that module as a plugin of the ``kedro`` command.)

    llama2-pipeline plan [...]        per-stage shapes, DeepSpeed configs, memory per GPU, launch commands
    llama2-pipeline examples [...]    write small bring-your-own-data example files
    llama2-pipeline viz-build         kedro viz's static site, made to open offline
    llama2-pipeline reproduce RUN_ID  rerun a recorded run (e.g. an RLHF round), compare its outputs bit for bit
    llama2-pipeline registry [...]    the registered models' aliases, the champion and why, the run behind one
    llama2-pipeline mlflow-links      the mlflow ui pages to open: training runs, the RLHF rounds side by side
    llama2-pipeline validate          check params.yaml as kedro run does (dvc.yaml's first stage)

Each subcommand is a module with ``main(argv) -> int`` imported only when called.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "plan": ("llama2_pipeline.commands.plan", "resources, DeepSpeed configs and launch commands per stage (no GPU needed)"),
    "examples": ("llama2_pipeline.commands.examples", "write bring-your-own-data example files for every swap point"),
    "viz-build": ("llama2_pipeline.commands.viz", "kedro viz's static site in build/, made to open offline"),
    "reproduce": ("llama2_pipeline.commands.reproduce", "rerun a recorded MLflow run and check its outputs' digests"),
    "registry": ("llama2_pipeline.commands.registry", "the registered models, their aliases and the champion"),
    "mlflow-links": ("llama2_pipeline.commands.mlflow_links", "mlflow ui pages: training runs, the rounds side by side"),
    "validate": ("llama2_pipeline.commands.validate", "check params.yaml as kedro run does, before any stage runs"),
}


def usage() -> str:
    lines = ["usage: llama2-pipeline COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "llama2-pipeline COMMAND --help for a command's options"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"llama2-pipeline: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
