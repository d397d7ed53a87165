"""`cci run --profile quick|full`: what each profile trains, explicit options over it, and where a person
reads it (`cci run --help`, a bad name's one line); the run's first and closing lines: tests/test_cci_run.py."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cci_core.generate.settings import TrainParams
from cci_core.refine.config import RefineConfig
from flows.profiles import resolve_profile

CCI = str(Path(sys.executable).parent / "cci")


def test_full_is_cci_refines_and_cci_trains_defaults():
    full, cfg = resolve_profile("full"), RefineConfig()
    assert (full.refine_rounds, full.refine_steps, full.warmup_steps, full.batch_size) == (
        cfg.rounds, cfg.steps, cfg.warmup_steps, cfg.batch_size)
    assert full.train_steps == TrainParams().steps and full.given == ()
    assert f"refine {cfg.rounds} rounds x {cfg.steps} steps" in full.line()


def test_quick_is_short_and_says_what_full_would_do():
    quick = resolve_profile()
    assert quick.name == "quick" and quick.refine_rounds < RefineConfig.rounds
    assert quick.refine_steps < RefineConfig.steps and quick.train_steps < TrainParams.steps
    assert f"({RefineConfig.rounds} x {RefineConfig.steps})" in quick.line()


def test_explicit_options_override_the_profile():
    p = resolve_profile("full", refine_steps=30, train_steps=20)
    assert (p.refine_rounds, p.refine_steps, p.warmup_steps, p.train_steps) == (RefineConfig.rounds, 30, 30, 20)
    assert p.batch_size == RefineConfig.batch_size
    assert p.line().startswith("profile full with --refine-steps 30, --train-steps 20: refine 2 rounds x 30 steps")
    assert resolve_profile("quick", refine_rounds=3).refine_steps == resolve_profile().refine_steps
    with pytest.raises(ValueError, match="--profile 'fast': give one of quick, full"):
        resolve_profile("fast")


def test_help_and_a_bad_profile():
    shown = subprocess.run([CCI, "run", "--help"], capture_output=True, text=True, timeout=120,
                           env={"COLUMNS": "300", "PATH": str(Path(CCI).parent)})
    assert shown.returncode == 0 and "--profile" in shown.stdout
    assert f"{RefineConfig.rounds} rounds x {RefineConfig.steps} steps" in " ".join(shown.stdout.split())
    bad = subprocess.run([CCI, "run", "--profile", "fast"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --profile 'fast': give one of quick, full"
