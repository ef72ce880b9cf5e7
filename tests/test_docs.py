"""The README is a front page and the guides under docs/ a site that builds: every relative
link resolves, every #anchor exists, the config reference is the code's, and MkDocs' strict
build passes (where mkdocs is installed: the `docs` extra, which CI installs)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's (and MkDocs' toc) anchor of a heading: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(path: str) -> set[str]:
    text = FENCE.sub("", open(path, encoding="utf-8").read())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_readme_is_a_front_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail into a guide under docs/"
    text = "\n".join(lines)
    for guide in ("docs/training.md", "docs/data.md", "docs/study.md", "docs/config.md"):
        assert f"]({guide})" in text


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_resolves(page):
    text = FENCE.sub("", open(page, encoding="utf-8").read())
    broken = []
    for url in LINK.findall(text):
        if re.match(r"^[a-z]+:", url):
            continue  # http(s), mailto
        target, _, anchor = url.partition("#")
        path = os.path.normpath(os.path.join(os.path.dirname(page), target)) if target else page
        if not os.path.exists(path):
            broken.append(f"{url} (no {os.path.relpath(path, ROOT)})")
        elif anchor and path.endswith(".md") and anchor not in _anchors(path):
            broken.append(f"{url} (no heading #{anchor})")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)


def test_config_reference_is_the_codes():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "config_reference.py")], capture_output=True,
                         text=True, check=True).stdout
    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as f:
        page = f.read()
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert rows and [line for line in page.splitlines() if line.startswith("| `")] == rows, \
        "docs/config.md is out of date: regenerate its table with python scripts/config_reference.py"


def test_mkdocs_strict_build(tmp_path):
    if shutil.which("mkdocs", path=os.path.dirname(sys.executable)) is None and shutil.which("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    exe = shutil.which("mkdocs", path=os.path.dirname(sys.executable)) or shutil.which("mkdocs")
    res = subprocess.run([exe, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "site" / "study" / "index.html").exists()
