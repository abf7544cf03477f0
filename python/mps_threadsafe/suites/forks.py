"""Rounds in fork()ed children of one warm interpreter (Note [Forked rounds]): the same
contract as rounds.run_round (a crash is counted, a hang killed, never retried), without a
fresh interpreter's start-up per round.

Note [Forked rounds]
Every round runs in a process of its own, so that a crash is observed and counted (rounds.py).
A fresh interpreter per round re-imports torch: about 1.5 s on the 2-core machine and several
seconds on the 16-core one, whose torch is a CUDA build; serve-bench's cells measure 1.5-3 s
each, so the imports took most of a run's time. The fork server is one interpreter, started
once per suite run, that has imported torch and this package and touched no device: no
runtime, no stream, no thread. Each round is a fork() of it, so each round's process starts as
a new interpreter's would, with its own runtime, sim device and threads, minus the import. The
server runs one round at a time: it forks, sends the parent the child's pid (on a timeout the
parent kills the child, as subprocess.run's timeout kills a spawned round), waits for it and
sends back its exit status and output, which the parent reads as it reads a spawned round's
(rounds.outcome_of).

Only for mps_sim and cpu: Apple's frameworks do not support fork() without exec (Objective-C
runtime initialization after fork aborts the child), so on mps every round stays a fresh
interpreter (`rounds_runner`).
"""

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

from . import rounds

SERVER_ENTRY = "_fork_server"
FORKABLE_DEVICES = ("mps_sim", "cpu")
_REPLY_WAIT = 60  # seconds for the server to answer outside a round's own time


class ForkServer:
    """The parent's side: `run_round(spec, timeout, entry)` as rounds.run_round. Use as a
    context manager (the server exits when it ends)."""

    def __init__(self):
        self._proc = None
        self._stderr = None  # the server's own (a file: a pipe nobody reads could fill)
        self._buffer = b""
        self._running = None  # the pid of the round in progress

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._running is not None:  # left mid-round (a Ctrl-C): its process goes too
            _kill(self._running)
            self._running = None
        if self._proc is not None:
            proc, self._proc = self._proc, None
            try:
                proc.stdin.close()  # the server's loop ends at end of input
                proc.wait(timeout=_REPLY_WAIT)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            self._stderr.close()

    def _start(self):
        self._buffer = b""
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mps_threadsafe", SERVER_ENTRY], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, env=dict(os.environ))

    def run_round(self, spec, timeout, entry="_round"):
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        request = json.dumps({"entry": entry, "spec": json.dumps(spec)}) + "\n"
        try:
            self._proc.stdin.write(request.encode())
            self._proc.stdin.flush()
        except OSError:
            return self._server_failed("could not send it the round")
        started = self._reply(_REPLY_WAIT)
        if started is None or "pid" not in started:
            return self._server_failed("it started no round")
        self._running = started["pid"]
        reply = self._reply(timeout)
        if reply is None:  # the round's own time ran out: a hang, killed as a spawned one is
            _kill(started["pid"])
            reply = self._reply(_REPLY_WAIT)
            self._running = None
            if reply is None:
                return self._server_failed("it did not report the killed round")
            return {"outcome": "hang", "detail": f"no result within {timeout}s",
                    "stderr_tail": rounds.tail(reply.get("stderr"))}
        self._running = None
        return rounds.outcome_of(reply["returncode"], reply["stdout"], reply["stderr"])

    def _reply(self, timeout):
        """The server's next line as a dict; None if none came within `timeout` s or the
        server closed its output."""
        deadline = time.monotonic() + timeout
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def _server_failed(self, what):
        """The server itself broke (it runs no round code, so this is not the round's
        outcome to hide): an error for this round, and a new server for the next."""
        proc, self._proc = self._proc, None
        proc.kill()
        proc.communicate()
        self._stderr.seek(0)
        err = self._stderr.read()
        self._stderr.close()
        return {"outcome": "error", "detail": f"the fork server failed: {what}",
                "stderr_tail": rounds.tail(err)}


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass


def rounds_runner(device):
    """A context manager whose value is the run_round for `device`'s rounds: a ForkServer's
    on mps_sim and cpu, rounds.run_round (a fresh interpreter per round) on mps."""
    if device in FORKABLE_DEVICES and hasattr(os, "fork"):
        return ForkServer()
    return _Spawning()


class _Spawning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    run_round = staticmethod(rounds.run_round)


# ---- The server ----------------------------------------------------------------------------


def server_main():
    """`python -m mps_threadsafe _fork_server`: reads {"entry", "spec"} lines; for each, forks
    a child that runs that entry point, and writes {"pid"} then {"returncode", "stdout",
    "stderr"} lines (Note [Forked rounds])."""
    import torch  # noqa: F401  (imported here once: what every round's fork saves)

    from .. import __main__ as entries
    from . import serve, threads  # noqa: F401  (and the suites' own imports)

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)  # nothing but the channel reaches the parent's pipe
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("entry") not in rounds.CHILD_ENTRIES:
            raise ValueError(f"fork server: no round entry point {request.get('entry')!r}")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(entries, request, out.fileno(), err.fileno(), devnull, channel)
            channel.write(json.dumps({"pid": pid}) + "\n")
            _, status = os.waitpid(pid, 0)
            out.seek(0)
            err.seek(0)
            channel.write(json.dumps({
                "returncode": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode(errors="replace"),
                "stderr": err.read().decode(errors="replace")}) + "\n")
    return 0


def _child(entries, request, out_fd, err_fd, devnull, channel):
    """In the forked child: the round's output goes to its files, then the entry point runs;
    it ends the process itself (os._exit), and so does every way out of here."""
    code = 1
    try:
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.close(channel.fileno())
        code = entries.main([request["entry"], request["spec"]]) or 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
