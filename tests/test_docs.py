"""The docs never drift from the code: every source path they name exists, their runnable example
runs, and the site builds in strict mode (a broken link or nav entry fails)."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
# `mmjax/data/folder.py`, `tests/interop/`, `mmjax/training/loop.py::train_and_evaluate`
SOURCE_PATH = re.compile(r"`((?:mmjax|configs|tests|bench|docs)/[A-Za-z0-9_./-]*?)(?:::([A-Za-z_]\w*))?`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_source_path_and_link_a_page_names_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for match in SOURCE_PATH.finditer(text):
        path, symbol = REPO / match.group(1).rstrip("."), match.group(2)
        if not path.exists():
            missing.append(match.group(0))
        elif symbol and not re.search(rf"^\s*(def|class)\s+{symbol}\b|^{symbol}\s*=", path.read_text(), re.M):
            missing.append(match.group(0) + " (no such symbol)")
    for match in LINK.finditer(text):
        target = match.group(1)
        if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists():
            missing.append(f"link {target}")
    assert not missing, f"{page.name} names what does not exist: {missing}"


def test_the_walkthrough_names_modules_that_exist():
    """docs/README.md lists modules by file name under a heading naming their folder."""
    folder, missing, checked = None, [], 0
    for line in (REPO / "docs" / "README.md").read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^##+ .*`((?:mmjax)/[\w/]*)`", line)
        if heading:
            folder = REPO / heading.group(1)
        elif line.startswith("#"):
            folder = None
        elif folder is not None:
            for name in re.findall(r"`(\w+\.py)`", line):
                checked += 1
                if not list(folder.rglob(name)) and not (REPO / "mmjax" / name).exists():
                    missing.append(f"{folder.relative_to(REPO)}/{name}")
    assert checked > 20 and not missing, (checked, missing)


CHAPTERS = sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "README.md")
# A ```python block (its code), optionally preceded by a "not run" note, optionally followed by
# the ```text block of what it prints.
BLOCK = re.compile(r"(<!-- not run: (?P<why>[^>]*?) -->\n)?^```python\n(?P<code>.*?)^```\n"
                   r"(?:\n*^```text\n(?P<output>.*?)^```)?", re.S | re.M)


@pytest.mark.parametrize("page", CHAPTERS, ids=lambda p: p.name)
def test_each_chapters_examples_run_and_print_what_it_shows(page, tmp_path):
    """A chapter's Python blocks run in order as one script (listings included from the source
    excepted, and blocks marked "not run" with their reason); its output must be the text blocks
    that follow them."""
    script, expected = [], []
    for block in BLOCK.finditer(page.read_text(encoding="utf-8")):
        if "--8<--" in block["code"]:
            continue  # a listing included from the source: it cannot drift
        if block["why"] is not None:
            assert block["why"].strip(), f"{page.name}: a block not run must say why"
            continue
        script.append(block["code"])
        if block["output"] is not None:
            expected.append(block["output"])
    if not script:
        pytest.skip(f"{page.name} has no runnable example")
    (tmp_path / "example.py").write_text("\n".join(script))
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed, shown = proc.stdout.strip(), "".join(expected).strip()
    assert printed == shown, f"{page.name} prints:\n{printed}\n\nbut shows:\n{shown}"


def test_the_site_builds_in_strict_mode(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[docs]') builds the site")
    pytest.importorskip("material", reason="the docs extra installs mkdocs-material")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "data" / "index.html").exists()
    shutil.rmtree(tmp_path / "site")


def _has_runnable_examples(path: pathlib.Path) -> bool:
    return any(">>> " in line and "+SKIP" not in line for line in path.read_text(encoding="utf-8").splitlines())


# Modules whose docstrings hold `>>>` examples that can run here (a download's are marked +SKIP).
DOCTEST_MODULES = sorted(
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for path in (REPO / "mmjax").rglob("*.py") if _has_runnable_examples(path)
)


@pytest.mark.parametrize("module_name", DOCTEST_MODULES)
def test_the_docstring_examples_of_the_api_pages_run(module_name):
    """The API pages render the docstrings; their `>>>` examples must print what they show."""
    import doctest
    import importlib

    import jax
    import jax.numpy as jnp
    import numpy as np

    module = importlib.import_module(module_name)
    result = doctest.testmod(module, extraglobs={"jax": jax, "jnp": jnp, "np": np},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0, result
