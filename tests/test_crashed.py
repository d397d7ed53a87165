"""Dead runs end: a flow run whose process is killed with SIGKILL is marked Crashed by the
automation of :mod:`deployments.automations` (heartbeats stop, the proactive trigger fires),
while a run that finished normally keeps its Completed state.

Real parts: the session's Prefect server (its triggers and actions services), flow runs in
their own processes beating through :func:`flows.liveness.heartbeats`. The automation
watches only this test's tag, with a 15 s window instead of the production 90 s (heartbeats
cannot be faster than Prefect's minimum of 30 s).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
WITHIN_S = 15

FLOW = """
import sys, time
from prefect import flow, tags
from prefect.runtime import flow_run
from flows.liveness import heartbeats

@flow(name="crash-probe")
def probe(seconds: float) -> None:
    print(flow_run.id, flush=True)
    time.sleep(seconds)

with heartbeats(), tags(sys.argv[1]):
    probe(float(sys.argv[2]))
"""


def _start(tag: str, seconds: float, api: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    p = subprocess.Popen([sys.executable, "-c", FLOW, tag, str(seconds)], cwd=ROOT, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline().strip()
    assert line, f"the probe flow printed no flow run id (exit {p.poll()})"
    return p, line


def _state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]["type"]


def _heartbeats(api: str, run_id: str) -> int:
    r = httpx.post(f"{api}/events/filter", json={"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{run_id}"]}}}, timeout=30)
    r.raise_for_status()
    return len(r.json()["events"])


def test_a_killed_run_is_marked_crashed(prefect_api):
    from deployments.automations import crash_automation, delete_crash_automation, ensure_crash_automation

    tag = f"crash-test-{uuid.uuid4().hex[:8]}"
    name = f"cci crash test {tag}"
    # the production automation watches the tag "cci" with a 90 s window
    prod = crash_automation()
    assert prod.trigger.within.total_seconds() == 90 and prod.trigger.posture == "Proactive"
    assert ensure_crash_automation(WITHIN_S, tag, name) == ensure_crash_automation(WITHIN_S, tag, name)
    killed = done = None
    try:
        done, done_id = _start(tag, 0.5, prefect_api)
        killed, run_id = _start(tag, 600, prefect_api)
        assert done.wait(timeout=120) == 0
        assert _state(prefect_api, done_id) == "COMPLETED"
        t0 = time.monotonic()
        while _heartbeats(prefect_api, run_id) == 0:  # the run has said it is alive
            assert time.monotonic() - t0 < 60, "no heartbeat event from the running probe"
            time.sleep(1)
        assert _state(prefect_api, run_id) == "RUNNING"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        t_kill = time.monotonic()
        state = "RUNNING"
        while state == "RUNNING" and time.monotonic() - t_kill < 120:
            time.sleep(2)
            state = _state(prefect_api, run_id)
        waited = time.monotonic() - t_kill
        assert state == "CRASHED", f"the killed run is {state} {waited:.0f} s after the kill"
        print(f"killed run marked Crashed {waited:.0f} s after SIGKILL (window {WITHIN_S} s)")
        fr = httpx.get(f"{prefect_api}/flow_runs/{run_id}", timeout=30).json()
        assert "heartbeat" in fr["state"]["message"]
        assert _state(prefect_api, done_id) == "COMPLETED"  # a finished run is left alone
    finally:
        for p in (killed, done):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        delete_crash_automation(name)
