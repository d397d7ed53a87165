"""`cci run`'s profiles: ``quick`` (the pipeline in minutes on a laptop's CPU) and ``full`` (the
refinement with `cci refine`'s defaults, the generators with `cci train`'s); explicit step and round
options override either."""
from __future__ import annotations

from dataclasses import dataclass, replace

from cci_core.generate.settings import TrainParams
from cci_core.refine.config import RefineConfig

QUICK_STEPS = 150


@dataclass(frozen=True)
class Profile:
    """The refinement and generator-training budget of one ``cci run``.

    refine_rounds : refinement rounds after round 0 (``RefineConfig.rounds``)
    refine_steps, warmup_steps : classifier training steps in each later round / in round 0
    batch_size : the classifier's training batch
    train_steps : training steps per generator (``TrainParams.steps``)
    given : the options given explicitly in place of the profile's own, as ``--flag value``
    """
    name: str
    refine_rounds: int
    refine_steps: int
    warmup_steps: int
    batch_size: int
    train_steps: int
    given: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for a person: the profile and what it means."""
        rounds = f"{self.refine_rounds} round{'s' if self.refine_rounds != 1 else ''}"
        other = ("--profile full uses cci refine's defaults "
                 f"({PROFILES['full'].refine_rounds} x {PROFILES['full'].refine_steps})"
                 if self.name == "quick" else "cci refine's and cci train's defaults")
        given = f" with {', '.join(self.given)}" if self.given else ""
        return (f"profile {self.name}{given}: refine {rounds} x {self.refine_steps} steps, generators "
                f"{self.train_steps} steps; {other}")


PROFILES = {
    "quick": Profile("quick", refine_rounds=1, refine_steps=QUICK_STEPS, warmup_steps=QUICK_STEPS, batch_size=128,
                     train_steps=QUICK_STEPS),
    "full": Profile("full", refine_rounds=RefineConfig.rounds, refine_steps=RefineConfig.steps,
                    warmup_steps=RefineConfig.warmup_steps, batch_size=RefineConfig.batch_size,
                    train_steps=TrainParams.steps),
}


def resolve_profile(name: str = "quick", refine_rounds: int | None = None, refine_steps: int | None = None,
                    train_steps: int | None = None) -> Profile:
    """Profile NAME with the options given explicitly (not None) in place of its own; an explicit
    ``refine_steps`` sets round 0's steps too, as ``cci run --refine-steps`` always has."""
    if name not in PROFILES:
        raise ValueError(f"--profile {name!r}: give one of {', '.join(PROFILES)}")
    explicit = {"refine_rounds": refine_rounds, "refine_steps": refine_steps, "train_steps": train_steps}
    changed = {key: value for key, value in explicit.items() if value is not None}
    given = tuple(f"--{key.replace('_', '-')} {value}" for key, value in changed.items())
    if refine_steps is not None:
        changed["warmup_steps"] = refine_steps
    return replace(PROFILES[name], given=given, **changed)
