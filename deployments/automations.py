"""The automation that ends dead runs: a CCI flow run whose heartbeats stop is marked Crashed.

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m deployments.automations            # once per server (deployments.deploy does it too)

Every running flow run emits ``prefect.flow-run.heartbeat`` events (the CLI and the
deployments set ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` to 30 s, :mod:`flows.liveness`). The
automation is a proactive trigger per flow run tagged ``cci``: after a heartbeat, expect
another heartbeat or a final state within 90 s; when none comes (the process was killed, the
machine went away) it sets the run's state to Crashed. Runs of other projects on the same
server, which may beat at Prefect's default 180 s, are not watched.
"""
from __future__ import annotations

import argparse
from datetime import timedelta
from uuid import UUID

from flows.liveness import CRASH_AFTER_S, HEARTBEAT_S
from flows.naming import RUN_TAG

NAME = "cci: crash runs without heartbeats"
FINAL = ("Completed", "Failed", "Cancelled", "Crashed")


def crash_automation(within_s: float = CRASH_AFTER_S, tag: str = RUN_TAG, name: str = NAME):
    """The automation (not yet saved): no heartbeat or final state within ``within_s`` after a
    heartbeat of a flow run tagged ``tag`` -> the run is set Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return Automation(
        name=name,
        description=f"A flow run tagged {tag!r} that has not sent a heartbeat for {within_s:g} s (it beats every "
                    f"{HEARTBEAT_S} s) has lost its process: mark it Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in FINAL)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "tag",
                                                 "prefect.resource.id": f"prefect.tag.{tag}"}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {within_s:g} s: the run's process is gone (killed, or its machine lost)")],
    )


def ensure_crash_automation(within_s: float = CRASH_AFTER_S, tag: str = RUN_TAG, name: str = NAME) -> UUID:
    """Create the automation on the server at ``PREFECT_API_URL``, or update the one of that name."""
    from prefect.automations import Automation
    wanted = crash_automation(within_s, tag, name)
    try:
        existing = Automation.read(name=name)
    except ValueError:  # none of that name yet
        existing = None
    if existing is None:
        return wanted.create().id
    wanted.id = existing.id
    wanted.update()
    return existing.id


def delete_crash_automation(name: str = NAME) -> bool:
    from prefect.automations import Automation
    try:
        return Automation.read(name=name).delete()
    except ValueError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--within", type=float, default=CRASH_AFTER_S,
                    help=f"seconds without a heartbeat before a run is marked Crashed (default {CRASH_AFTER_S})")
    ap.add_argument("--tag", default=RUN_TAG, help=f"watch flow runs with this tag (default {RUN_TAG})")
    args = ap.parse_args()
    print(f"automation {ensure_crash_automation(args.within, args.tag)} ({NAME!r})")


if __name__ == "__main__":
    main()
