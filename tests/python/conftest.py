"""Shared fixtures for the mps_sim / mps_threadsafe tests.

Every test runs with the runtime's protections on and the sim's violation policy 'throw'
unless it says otherwise, so a violation in a protected run fails the test with Metal's
message instead of aborting pytest. Tests that switch protections off run in a subprocess.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mps_threadsafe  # noqa: F401  registers torch.mps_sim

DEVICE = "mps_sim"


def drain_all_streams():
    """Submits and waits for the work of every stream created so far. Tests leave work on
    explicit streams; set_threadsafe refuses while any stream holds uncommitted work."""
    for stream in torch.mps_sim.threadsafe_stats()["streams"]:
        torch.mps_sim.Stream(stream_id=stream["id"]).synchronize()


@pytest.fixture(autouse=True)
def protected_runtime():
    sim = torch.mps_sim
    drain_all_streams()
    sim.set_protections(True)
    sim.set_violation_policy("throw")
    sim.set_threadsafe(False)
    sim.clear_violations()
    yield
    sim.set_stream(None)
    drain_all_streams()
    assert sim.violations() == [], "the sim reported Metal violations in a protected run"


def run_python(code, env=None, timeout=240):
    """Runs `code` in a fresh interpreter; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def sim_stats():
    return torch.mps_sim.threadsafe_stats()
