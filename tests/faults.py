"""Fault injection, shared by the ``test_faults_*`` modules (issue 28): damage a real store, run
the real ``cci`` on it, and say in the issue's words what came out.

Outcomes: ``clear error`` (exit 1, one ``error:`` line holding the expected fragments, no
traceback, nothing lost), ``correct result`` (exit 0 and the test's own check of the output
holds), ``traceback``, ``silent result`` (exit 0 with wrong output), ``misleading`` (an error
line that misses what it should name), ``loss`` (a file that was there before is gone or
changed). Every case lands in :data:`TALLY`; ``CCI_FAULT_REPORT=path.json`` makes the session
write the tally (tests/conftest.py), as ``CCI_BAD_INPUT_REPORT`` does for bad requests.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

TALLY: dict[str, str] = {}
OUTCOMES = ("clear error", "correct result", "traceback", "silent result", "misleading", "loss")
# files a reading or refused command may create or touch without losing anything
_VOLATILE = ("lineage.db", ".lock", ".cci-server", ".prefect")


@dataclass
class Ran:
    """What one command printed and returned."""
    exit_code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def snapshot(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ROOT by relative path (the lineage database, the store's Prefect
    database folder and lock files left out: SQLite may rewrite pages on a read, locks come and go)."""
    root = Path(root)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and not any(v in part for part in p.relative_to(root).parts for v in _VOLATILE):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def lost(before: dict[str, str], after: dict[str, str], allow: Iterable[str] = ()) -> list[str]:
    """Files of BEFORE that are gone or changed in AFTER (paths starting with one of ALLOW excepted)."""
    allow = tuple(allow)
    return [p for p, h in before.items() if after.get(p) != h and not p.startswith(allow)]


def invoke(*args: str, env: dict[str, str] | None = None) -> Ran:
    """The Typer app in this process (fast; flows use the session's Prefect API when it is set).
    An exception that escaped the app is reported as a traceback."""
    from typer.testing import CliRunner

    from flows.cli import app
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400", **(env or {})})
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += f"\nTraceback (escaped the CLI): {result.exception!r}"
    return Ran(result.exit_code, result.stdout, stderr)


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> Ran:
    """The ``cci`` console script in a subprocess, as a user runs it."""
    cci = str(Path(sys.executable).parent / "cci")
    done = subprocess.run([cci, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "400", **(env or {})})
    return Ran(done.returncode, done.stdout, done.stderr)


def classify(ran: Ran, missing: list[str], fragments: Iterable[str] = (),
             correct: Callable[[Ran], bool] | None = None) -> str:
    """The outcome of one case: see the module docstring. With CORRECT, exit 0 is a correct result
    when CORRECT(ran) holds; without it, exit 0 is a silent result."""
    if missing:
        return "loss"
    if "Traceback" in ran.stderr or "Traceback" in ran.stdout:
        return "traceback"
    if ran.exit_code == 0:
        return "correct result" if correct is not None and correct(ran) else "silent result"
    if ran.exit_code == 1 and len(ran.errors) == 1 and all(f in ran.errors[0] for f in fragments):
        return "clear error"
    return "misleading"


def check(case_id: str, ran: Ran, before: dict[str, str], root: str | Path, *, fragments: Iterable[str] = (),
          correct: Callable[[Ran], bool] | None = None, allow: Iterable[str] = (), expect: str = "clear error") -> str:
    """Classify a case (BEFORE is :func:`snapshot` of ROOT taken after the damage, before the
    command), record it in :data:`TALLY` and assert it is EXPECT."""
    fragments = list(fragments)
    outcome = classify(ran, lost(before, snapshot(root), allow), fragments, correct)
    TALLY[case_id] = outcome
    assert outcome == expect, (case_id, outcome, ran.exit_code, fragments, ran.stderr[-3000:], ran.stdout[-1000:])
    return outcome


def flip_bytes(path: str | Path, offset: int | None = None, count: int = 16) -> None:
    """Invert COUNT bytes of a file in place, from OFFSET (default: the middle)."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def report(path: str | Path) -> dict:
    """Add this process's tally to PATH (the cases already there are kept: with ``pytest -n``
    each worker process adds its own; the session's controller removes the file first) and
    write the JSON-ready counts (every outcome, zeros included) and the cases."""
    import fcntl
    import json
    import os
    path = Path(path).resolve()
    fd = os.open(path.parent, os.O_RDONLY)  # the folder is the lock: no lock file left beside the report
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        cases = json.loads(path.read_text())["cases"] if path.exists() else {}
        cases.update(TALLY)
        counts = {k: sum(v == k for v in cases.values()) for k in OUTCOMES}
        out = {"tried": len(cases), **counts, "cases": dict(sorted(cases.items()))}
        path.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        os.close(fd)
    return out
