"""The docs and examples are part of the product: their code runs here.

Every ```python block of a page in docs/ runs: a page's blocks are joined in order and run as
one script in a fresh interpreter. Blocks meant only to be read use ```py, ```bash or ```text.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("**/*.md"))
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)


def page_code(page: Path) -> str:
    return "\n".join(BLOCK.findall(page.read_text()))


def run_python(args, cwd, timeout=100):
    """Run Python on ``args``; a run that times out fails with what it printed so far
    (before pytest's own timeout would end the test without it)."""
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        def text(out):
            return out.decode(errors="replace") if isinstance(out, bytes) else out or ""
        pytest.fail(f"{args} ran for more than {timeout} s; its output so far:\n"
                    f"{text(exc.stdout)[-3000:]}\n{text(exc.stderr)[-3000:]}")


@pytest.mark.parametrize("page", [p for p in PAGES if page_code(p).strip()],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_page_code_runs(page, tmp_path):
    script = tmp_path / f"page_{page.stem}.py"  # never shadow a module (asyncio.md!)
    script.write_text(page_code(page))
    proc = run_python([str(script)], tmp_path)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(example, tmp_path):
    proc = run_python([str(example)], tmp_path, timeout=300)
    assert proc.returncode == 0, f"{example.name}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_readme_names_the_quickstart_and_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "examples/quickstart.py" in readme
    assert "-m pytest" in readme


@pytest.mark.skipif(shutil.which("mkdocs", path=os.path.dirname(sys.executable)) is None,
                    reason="mkdocs is installed with the test extras")
def test_mkdocs_build_strict(tmp_path):
    mkdocs = shutil.which("mkdocs", path=os.path.dirname(sys.executable))
    proc = subprocess.run([mkdocs, "build", "--strict", "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
