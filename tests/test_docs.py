"""The documentation site builds with warnings as errors, every page is in its navigation, the README
points at pages that exist and keeps the two commands, and the API reference renders from the
docstrings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _nav_pages(nav) -> list[str]:
    pages: list[str] = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _text(html: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.read_text(encoding="utf-8")))


def test_the_site_builds_strictly_with_every_page_in_the_navigation(site):
    import yaml

    # mkdocs.yml uses no custom YAML tags, so the plain loader reads it
    nav = _nav_pages(yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"])
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    for page in pages:
        built = site / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        assert built.is_file(), page


def test_the_api_reference_renders_the_docstrings(site):
    restoring = _text(site / "api/restoring/index.html")
    assert "StreamingRestorer" in restoring and "load_restorer" in restoring
    # the docstrings' text, their Google-style sections parsed into tables
    assert "Build the restoration network of a restorer checkpoint, with its task" in restoring
    assert "Restore a video one frame at a time" in restoring and "Parameters:" in restoring
    models = _text(site / "api/models/index.html")
    assert "PWCLite" in models and "S2SVR" in models
    commands = _text(site / "api/commands/index.html")
    assert "apply_process_settings" in commands and "quiet_third_party" in commands


def test_the_readme_blocks_included_in_the_pages_are_there(site):
    started = _text(site / "getting-started/index.html")
    assert "make demo (seed 0) prints" in started and "--8&lt;--" not in started and "--8<--" not in started
    assert "commands.py, console.py" in _text(site / "develop/index.html")


def test_the_readme_is_short_keeps_the_two_commands_and_links_to_pages_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 160
    assert "make demo" in readme and "make test" in readme
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert {"docs/getting-started.md", "docs/training.md", "docs/restoring.md"} <= set(local)
    for link in local:
        assert (REPO / link).exists(), link
