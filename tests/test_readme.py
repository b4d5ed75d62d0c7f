"""The README's examples run in order, exactly as written.

Every ```python block of README.md is concatenated, in order, into one
script that runs in a fresh interpreter on this machine.  A block is left
out only when the line before it is an HTML comment starting with
``<!-- readme: not run`` that says why (another process, another kernel).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import memwatch

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)```", re.DOTALL)


def readme_blocks() -> tuple[list[str], list[str]]:
    """(blocks to run, reasons of the blocks left out)."""
    run, skipped = [], []
    for m in _BLOCK.finditer(README.read_text()):
        before = m.group("before").strip()
        if before.startswith("<!-- readme: not run"):
            skipped.append(before)
        else:
            run.append(m.group("code"))
    return run, skipped


def test_readme_examples_run_in_order(tmp_path: Path) -> None:
    if not README.exists():
        pytest.skip("README.md is not next to the tests (installed package)")
    if not any(b.available for b in memwatch.backends()):
        pytest.skip("no backend available here")
    run, skipped = readme_blocks()
    assert len(run) >= 4, "the README lost its examples"
    for reason in skipped:
        assert re.search(r"not run \(.{10,}\)", reason), f"say why a block is not run: {reason}"
    script = tmp_path / "readme_examples.py"
    script.write_text("\n".join(run))
    env = dict(os.environ, PYTHONPATH=str(Path(memwatch.__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    # The first example's output, as the comments in the README say.
    assert lines[0].split()[1] == str(memwatch.PAGE_SIZE)
    assert lines[2] == "[]"


def test_readme_states_the_limits() -> None:
    """The facts issue 7 asks the README to state (kept by this test)."""
    text = README.read_text()
    for fact in ("page-aligned", "pwrite(2)", "fork()", "MAP_SHARED",
                 "multiprocessing.shared_memory", "memwatch.alloc", "huge page",
                 "EFAULT", "License"):
        assert fact in text, fact
