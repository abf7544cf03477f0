"""Each measurement round in its own subprocess, so a crash (the process dying on a signal,
as Metal kills it on a violation) is observed and counted by the parent, never retried.

The child is `python -m mps_threadsafe _round SPEC_JSON` (a threaded round, threads.py) or
another child entry point (`_serve_round`: one serve-bench cell, serve.py); it prints one line
`MPS_THREADSAFE_RESULT {json}` and exits. CHILD_ENTRIES lists them.
"""

import json
import os
import signal
import subprocess
import sys

RESULT_TAG = "MPS_THREADSAFE_RESULT "
CHILD_ENTRIES = ("_round", "_serve_round")


def run_round(spec, timeout, entry="_round"):
    """Runs one round (`entry`: the child entry point) in a fresh interpreter; returns its
    result dict with `outcome`: ok, crash, hang or error. (forks.py runs rounds as fork()s of
    a warm interpreter instead, with the same outcomes.)"""
    command = [sys.executable, "-m", "mps_threadsafe", entry, json.dumps(spec)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ))
    except subprocess.TimeoutExpired as expired:
        return {"outcome": "hang", "detail": f"no result within {timeout}s",
                "stderr_tail": tail(expired.stderr)}
    return outcome_of(proc.returncode, proc.stdout, proc.stderr)


def outcome_of(returncode, stdout, stderr):
    """A finished round's result dict from its exit status (negative: the signal that killed
    it) and output."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["outcome"] = "ok" if returncode == 0 else "error"
            return result
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return {"outcome": "crash", "detail": f"killed by {name}", "stderr_tail": tail(stderr)}
    return {"outcome": "error", "detail": f"exit status {returncode}",
            "stderr_tail": tail(stderr)}


def tail(text, lines=6):
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def child_main(spec_json):
    """The child side: set the mode, run the threads, print the result."""
    from . import threads
    from .device import Device

    spec = json.loads(spec_json)
    device = Device(spec["device"])
    device.set_mode(spec["mode"])
    result = threads.run_threads(
        device, spec["model"], spec["threads"], spec["iterations"], batch=spec.get("batch"),
        check=spec.get("check", False), distinct_inputs=spec.get("distinct_inputs", False),
        quick=spec.get("quick", False), seed=spec.get("seed", 0),
        global_lock=spec["mode"] == "lock", shared_model=spec.get("shared_model", False))
    result["mode"] = spec["mode"]
    sys.stdout.write(RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown: worker streams and sim threads belong to a leaked runtime
    # (Note [Runtime lifetime]); nothing is left to flush.
    os._exit(0)
