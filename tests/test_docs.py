"""The user's guide and the results page link to files and sections that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    fenced, out = False, set()
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := HEADING.match(line)):
            out.add(slug(m.group(1)))
    return out


def test_slug_follows_github():
    assert slug("The safety RM and its 0.90") == "the-safety-rm-and-its-090"
    assert slug("How much of GAtt's cost can its data recover?") == "how-much-of-gatts-cost-can-its-data-recover"
    assert slug("Inspecting: kedro viz and mlflow ui") == "inspecting-kedro-viz-and-mlflow-ui"


def test_local_links_reach_a_file_and_a_heading():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked, broken = 0, []
    for doc in docs:
        for target in LINK.findall(doc.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            rel, _, anchor = target.partition("#")
            path = (doc.parent / rel).resolve() if rel else doc
            checked += 1
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no file {path.relative_to(ROOT)})")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{doc.name}: {target} (no heading #{anchor} in {path.name})")
    assert checked >= 10 and not broken, broken
