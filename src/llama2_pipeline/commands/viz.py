"""``llama2-pipeline viz-build``: kedro viz's static site, made to open offline.

``kedro viz build`` writes ``build/`` (``index.html``, the app's scripts and ``api/`` JSON), but its
``index.html`` links a Google Fonts stylesheet (and preconnects to two Google hosts): opened
without a network the page asks for it, and behind a firewall that drops packets it waits for a
connection timeout before drawing. This command runs ``kedro viz build`` and removes those links
(the app falls back to the system sans-serif font), so viewing the site sends no request beyond
the machine serving it. Nothing of Kedro is imported here: ``kedro`` runs as a subprocess.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from llama2_pipeline.core.files import atomic_path

# <link ...> tags to any host (stylesheets, preconnect/dns-prefetch hints); the app's own files are relative
_EXTERNAL_LINK = re.compile(r"""<link\b[^>]*\bhref\s*=\s*["'](?:https?:)?//[^"']*["'][^>]*>\s*""", re.I)
_EXTERNAL_REF = re.compile(r"""(?:href|src)\s*=\s*["'](?:https?:)?//([^/"']+)""", re.I)


def make_offline(index_html: str) -> tuple[str, list[str]]:
    """``index.html`` without ``<link>`` tags to other hosts; (new text, the removed tags).
    Raises ValueError if another external reference (a script, an image) remains."""
    removed = [m.group(0).strip() for m in _EXTERNAL_LINK.finditer(index_html)]
    text = _EXTERNAL_LINK.sub("", index_html)
    left = sorted(set(_EXTERNAL_REF.findall(text)))
    if left:
        raise ValueError(f"kedro viz's index.html still references other hosts after removing <link> tags: {left}")
    return text, removed


def build_site(project: Path, out: Path | None = None, kedro: str = "kedro") -> tuple[Path, list[str]]:
    """``kedro viz build`` in ``project`` (into ``project/build``), made offline, moved to ``out`` if given."""
    p = subprocess.run([kedro, "viz", "build"], cwd=project, capture_output=True, text=True)
    site = project / "build"
    if p.returncode != 0 or not (site / "index.html").is_file():
        raise RuntimeError(f"kedro viz build failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    index = site / "index.html"
    text, removed = make_offline(index.read_text(encoding="utf-8"))
    with atomic_path(index) as tmp:
        tmp.write_text(text, encoding="utf-8")
    if out is not None and out.resolve() != site.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.move(str(site), str(out))
        site = out
    return site, removed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="llama2-pipeline viz-build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=".", help="the Kedro project (default: here)")
    ap.add_argument("--out", default=None, help="move the site here (default: PROJECT/build)")
    args = ap.parse_args(argv)
    os.environ.setdefault("DO_NOT_TRACK", "true")
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    kedro = shutil.which("kedro") or str(Path(sys.executable).parent / "kedro")
    try:
        site, removed = build_site(Path(args.project), Path(args.out) if args.out else None, kedro)
    except (RuntimeError, ValueError) as e:
        print(f"llama2-pipeline viz-build: {e}", file=sys.stderr)
        return 1
    print(f"kedro viz site: {site} (removed {len(removed)} link(s) to other hosts); view it offline with\n"
          f"  python -m http.server -d {site} -b 127.0.0.1 8000   # then open http://127.0.0.1:8000")
    return 0
