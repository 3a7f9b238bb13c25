"""Type checkers read aray's API as documented: pyright (standard mode) and mypy find no
error in examples/typed.py and exactly the marked mistakes in tests/typing/bad_calls.py;
mypy finds no error in aray itself.

(examples/typed.py itself runs in tests/test_docs.py, with the other examples.)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOOD = ROOT / "examples" / "typed.py"
BAD = ROOT / "tests" / "typing" / "bad_calls.py"

pytestmark = pytest.mark.timeout(300)


def marked_lines(path: Path) -> set[int]:
    """The lines of ``path`` that carry an ``# expect-error`` comment."""
    lines = path.read_text().splitlines()
    return {n for n, line in enumerate(lines, 1) if "# expect-error" in line}


def pyright_errors(path: Path) -> list[tuple[int, str]]:
    """``(line, message)`` of each error pyright reports in ``path``, run from the checkout."""
    proc = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable,
         str(path)], capture_output=True, text=True, cwd=ROOT, timeout=240)
    report = json.loads(proc.stdout)
    return [(d["range"]["start"]["line"] + 1, d["message"])
            for d in report["generalDiagnostics"] if d["severity"] == "error"]


def mypy_errors(path: Path, cache: Path) -> list[tuple[int, str]]:
    """``(line, message)`` of each error mypy reports in ``path`` (not in aray's own code,
    which it reads to learn the types but does not report on: ``--follow-imports=silent``)."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir", str(cache),
         "--no-error-summary", "--show-error-codes", str(path.relative_to(ROOT))],
        capture_output=True, text=True, cwd=ROOT, timeout=240)
    errors = []
    for line in proc.stdout.splitlines():
        where, _, message = line.partition(": error: ")
        if message:
            errors.append((int(where.rsplit(":", 1)[1]), message))
    assert proc.returncode == (1 if errors else 0), proc.stdout + proc.stderr
    return errors


def test_the_bad_file_marks_its_mistakes():
    assert len(marked_lines(BAD)) >= 6
    assert not marked_lines(GOOD)


def test_pyright_passes_the_typed_example():
    assert pyright_errors(GOOD) == []


def test_pyright_reports_exactly_the_mistakes():
    errors = pyright_errors(BAD)
    assert {line for line, _ in errors} == marked_lines(BAD), errors
    assert len(errors) == len(marked_lines(BAD)), errors


def test_mypy_passes_the_typed_example(tmp_path):
    assert mypy_errors(GOOD, tmp_path) == []


def test_mypy_reports_exactly_the_mistakes(tmp_path):
    errors = mypy_errors(BAD, tmp_path)
    assert {line for line, _ in errors} == marked_lines(BAD), errors
    assert len(errors) == len(marked_lines(BAD)), errors


def test_mypy_finds_no_error_in_aray_itself(tmp_path):
    """aray's own code (with node/ and store/, through the package's symlinks) passes mypy
    at its default settings."""
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "aray"],
        capture_output=True, text=True, cwd=ROOT, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout
