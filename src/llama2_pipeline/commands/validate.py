"""Check the recipe's parameters before DVC runs any stage: the ``validate_params`` stage of dvc.yaml.

    python -m llama2_pipeline.commands.validate        # or: llama2-pipeline validate

``dvc repro`` deletes a stage's outputs before it runs the stage's command, and Kedro checks the
parameters only then: a malformed ``params.yaml`` would cost the outputs of the first stage whose
parameters changed. ``validate_params`` depends on every key of ``params.yaml`` and runs first
(every other stage depends on its output): it resolves the parameters as ``kedro run`` does (the
profile, the ``KEDRO_ENV`` or ``conf/local`` overlays) and, when they are valid, writes
:data:`MARKER`. A bad value makes it fail, listing every problem, before DVC touches any other
stage; the marker is ``persist``-ed and its bytes never change, so a valid change of parameters
reruns this check and no stage that does not read the changed keys.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llama2_pipeline.core.files import atomic_path

MARKER = "data/params_checked.txt"
MARKER_TEXT = ("params.yaml was checked before any stage ran (dvc.yaml stage validate_params). "
               "The bytes of this file never change: stages depend on it to run after the check.\n")


def validate(project: Path, env: str | None = None) -> None:
    """Resolve and check the parameters of ``project`` as its Kedro runs do; raise ParamsError."""
    from llama2_pipeline.project.config_loader import LOADER_ARGS, RecipeConfigLoader

    cwd = Path.cwd()
    os.chdir(project)  # error messages name files relative to the project, as kedro run does
    try:
        RecipeConfigLoader("conf", env=env, **LOADER_ARGS)["parameters"]
    finally:
        os.chdir(cwd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llama2_pipeline.commands.validate",
                                 description="Check params.yaml (and the Kedro environment's overlays) as kedro run "
                                             "does; write the marker file of dvc.yaml's validate_params stage.")
    ap.add_argument("--project", type=Path, default=Path("."), help="the project folder (default: here)")
    ap.add_argument("--env", default=os.environ.get("KEDRO_ENV"), help="the Kedro environment (default: KEDRO_ENV)")
    args = ap.parse_args(argv)
    from llama2_pipeline.recipe import ParamsError

    try:
        validate(args.project, args.env)
    except ParamsError as e:
        print(f"{e}\n(no stage ran: dvc repro stopped before deleting any output)", file=sys.stderr)
        return 1
    marker = args.project / MARKER
    if not marker.is_file() or marker.read_text() != MARKER_TEXT:
        with atomic_path(marker) as tmp:
            tmp.write_text(MARKER_TEXT)
    print("parameters valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())
