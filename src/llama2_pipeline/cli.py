"""Project commands of the ``kedro`` CLI (Kedro loads ``<package>.cli``): ``kedro package`` whose
configuration archive holds ``params.yaml`` itself.

``conf/base/parameters.yml`` is a link to ``params.yaml`` (one source of parameters); Kedro's own
``package`` archives ``conf/`` with ``tar``, which stores the link, dangling once unpacked elsewhere.
This ``package`` builds the same two files, ``dist/<wheel>`` and ``dist/conf-llama2_pipeline.tar.gz``
(``conf/`` without ``local/*.yml``), with every link archived as the file it points to. Run the
package from any folder:

    pip install dist/llama2_pipeline-*.whl
    python -m llama2_pipeline --conf-source=dist/conf-llama2_pipeline.tar.gz --params profile=smoke
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import click
from kedro.framework.cli.project import run  # noqa: F401  (python -m llama2_pipeline looks for cli.run)
from kedro.framework.project import settings
from kedro.framework.startup import ProjectMetadata


@click.group(name="llama2_pipeline")
def cli() -> None:
    """Project commands."""


def _build_isolation() -> list[str]:
    """``--no-isolation`` when this environment has the build backend (no download), else nothing."""
    if importlib.util.find_spec("setuptools") is None:
        return []
    from importlib.metadata import version

    major = int(version("setuptools").split(".")[0])
    return ["--no-isolation", "--skip-dependency-check"] if major >= 77 else []


def archive_conf(conf: Path, target: Path) -> list[str]:
    """``conf`` as ``target`` (.tar.gz) under its own name, links followed, ``local/*.yml`` left out;
    returns the archived names."""
    names = []
    tmp = target.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz", dereference=True) as tar:
        tar.add(conf, arcname=conf.name, recursive=False)
        for path in sorted(conf.rglob("*")):
            rel = path.relative_to(conf)
            if rel.parts[0] == "local" and path.suffix == ".yml":
                continue
            if path.is_symlink() and not path.exists():
                raise click.ClickException(f"{path} is a dangling link")
            name = (Path(conf.name) / rel).as_posix()
            tar.add(path, arcname=name, recursive=False)
            names.append(name)
    tmp.replace(target)
    return names


@cli.command()
@click.pass_obj
def package(metadata: ProjectMetadata) -> None:
    """Package the project: a wheel and its configuration (links followed) in dist/."""
    root = metadata.project_path
    dist = root / "dist"
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), *_build_isolation()]
    if subprocess.call(cmd, cwd=root) != 0:
        raise click.ClickException(f"`{' '.join(cmd)}` failed")
    conf = root / settings.CONF_SOURCE
    target = dist / f"conf-{metadata.package_name}.tar.gz"
    archive_conf(conf, target)
    click.echo(f"{target.relative_to(root)}: {conf.name}/ with links followed (parameters.yml = params.yaml)")
