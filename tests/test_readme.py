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
    # The polling example (one written page per tick, exactly), then the
    # first Watch example, as the comments in the README say.
    assert lines[:3] == ["0 1 [0]", "1 1 [409600]", "2 1 [819200]"]
    assert lines[3].split()[1] == str(memwatch.PAGE_SIZE)
    assert lines[5] == "[]"


def test_readme_states_the_limits() -> None:
    """The facts issue 7 asks the README to state (kept by this test)."""
    text = README.read_text()
    for fact in ("page-aligned", "pwrite(2)", "fork()", "MAP_SHARED",
                 "multiprocessing.shared_memory", "memwatch.alloc", "huge page",
                 "EFAULT", "License"):
        assert fact in text, fact


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    nxt = re.search(r"\n##+ ", text[start + len(heading):])
    return text[start: start + len(heading) + (nxt.start() if nxt else len(text))]


def test_readme_opens_with_the_two_commands() -> None:
    """Issue 9, item 5: the first block is the install-and-demo command and
    the test command, exactly; the lines before it are only the title and
    the tagline."""
    text = README.read_text()
    first = re.search(r"```(\w*)\n(.*?)```", text, re.DOTALL)
    assert first is not None and first.group(1) == "sh"
    assert first.start() < 600, "the commands must open the README"
    lines = first.group(2).splitlines()
    assert len(lines) == 2, lines
    assert "pip install" in lines[0] and lines[0].endswith("memwatch demo")
    assert lines[1] == "bash ci/test.sh"
    # One section per kind of user.
    for heading in ("### Applications that poll at high frequency",
                    "### Test suites (pytest, pytest-benchmark)",
                    "### C and C++ extensions",
                    "### From the shell: the `memwatch` command"):
        assert heading in text, heading


def _help(*args: str) -> str:
    env = dict(os.environ, COLUMNS="80",
               PYTHONPATH=str(Path(memwatch.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "memwatch", *args], capture_output=True,
                         text=True, env=env, timeout=120, check=True).stdout
    # Python < 3.10 titles the options section differently.
    return out.replace("optional arguments:", "options:")


def test_memwatch_help_agrees_with_the_readme() -> None:
    """The README shows `memwatch --help` verbatim (COLUMNS=80).  After adding
    a subcommand, paste the new output: COLUMNS=80 python -m memwatch --help."""
    text = README.read_text()
    m = re.search(r"```text\n\$ memwatch --help\n(.*?)```", text, re.DOTALL)
    assert m is not None, "the README lost its memwatch --help block"
    assert m.group(1) == _help("--help")


def test_readme_names_only_real_commands_and_options() -> None:
    """Every `memwatch NAME` the README mentions is a subcommand, and every
    --option in the shell section belongs to one."""
    from memwatch import _cli

    text = README.read_text()
    names = {c.name for c in _cli.COMMANDS} | {a for c in _cli.COMMANDS for a in c.aliases}
    mentioned = set(re.findall(r"`(?:\.venv/bin/)?memwatch ([a-z]+)", text))
    assert mentioned, "the README mentions no memwatch command"
    assert mentioned <= names, mentioned - names
    parser = _cli.build_parser()
    options = {"--help", "--version"}
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        for sub in action.choices.values():  # type: ignore[union-attr]
            for a in sub._actions:
                options.update(a.option_strings)
    shell = _section(text, "### From the shell")
    used = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", shell))
    assert used <= options, used - options
