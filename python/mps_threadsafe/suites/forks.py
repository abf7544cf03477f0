"""Rounds in fork()ed children of one warm interpreter (Note [Forked rounds]): the same
contract as rounds.run_round (a crash is counted, a hang killed, never retried), without a
fresh interpreter's start-up per round.

Note [Forked rounds]
Every round runs in a process of its own, so that a crash is observed and counted (rounds.py).
A fresh interpreter per round re-imports torch: about 1.5 s on the 2-core machine and several
seconds on the 16-core one, whose torch is a CUDA build; serve-bench's cells measure 1.5-3 s
each, so the imports took much of a run's time. The fork server is one interpreter, started
once per suite run, that has imported torch and this package and touched no device (no
runtime, no stream; torch's own CPU thread pools are its only threads, and they handle fork()
themselves). Each round is a fork() of it: the round's process has its own runtime, sim device
and threads, as a new interpreter's would, minus the import.

The server is the round's parent, so it does everything a parent does to it: it runs one round
at a time, kills it when the round's time is up (a SIGALRM interrupts its waitpid: the pid is
its own unreaped child, never a reused number), reaps it, and sends the exit status, the
round's result line and the tail of its stderr (never its whole output) on a pipe of its own,
apart from its stdout. A SIGTERM from the parent (a run stopped mid-round) kills the round
before the server exits. The parent reads what rounds.outcome_of reads for a spawned round.

Differences from a fresh interpreter, none of which the rounds depend on (their workloads seed
themselves): the environment is the one the server started with; the Python hash seed is the
server's (torch's and Python's random generators are reseeded in each round). A server whose
probe fork finds the device unusable in a child (the runtime was made at import:
MPS_SIM_THREADSAFE=1 does that) says so, and every round then runs in a fresh interpreter.

Only for mps_sim and cpu: Apple's frameworks do not support fork() without exec, so on mps every
round is a fresh interpreter (`rounds_runner`).
"""

import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

from . import rounds

SERVER_ENTRY = "_fork_server"
FORKABLE_DEVICES = ("mps_sim", "cpu")
_REPLY_WAIT = 60     # seconds the server may take beyond a round's own time
_STDERR_KEPT = 1 << 16  # bytes of a round's stderr sent back (its tail is what is reported)


class ForkServer:
    """The parent's side: `run_round(spec, timeout, entry)` as rounds.run_round, one round at a
    time (callers from several threads take turns). Use as a context manager."""

    def __init__(self):
        self._proc = None
        self._channel = None  # the read end of the server's reply pipe
        self._stderr = None   # the server's own stderr (a file: a pipe nobody reads could fill)
        self._buffer = bytearray()
        self._forkable = True
        self._turn = threading.Lock()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Ends the server; a round still running (a Ctrl-C mid-round) is killed by it."""
        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            _terminate(proc)
        self._close_files()

    def run_round(self, spec, timeout, entry="_round"):
        with self._turn:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self._close_files()
                    self._proc = None
                if self._forkable:
                    self._start()
            if not self._forkable:
                return rounds.run_round(spec, timeout, entry)
            return self._run(spec, timeout, entry)

    def _start(self):
        read_end, write_end = os.pipe()
        self._buffer = bytearray()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mps_threadsafe", SERVER_ENTRY, str(write_end)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
                pass_fds=(write_end,), env=dict(os.environ))
        finally:
            os.close(write_end)
        self._channel = read_end
        hello = self._reply(_REPLY_WAIT)
        if not hello or not hello.get("forkable"):
            why = (hello or {}).get("why") or "it did not start"
            print(f"fork server: {why}; each round runs in a fresh interpreter instead",
                  file=sys.stderr)
            self._forkable = False
            proc, self._proc = self._proc, None
            proc.kill()
            proc.wait()
            self._close_files()

    def _run(self, spec, timeout, entry):
        request = json.dumps({"entry": entry, "spec": json.dumps(spec), "timeout": timeout})
        try:
            self._proc.stdin.write(request.encode() + b"\n")
            self._proc.stdin.flush()
        except OSError:
            return self._server_failed("could not send it the round")
        reply = self._reply(timeout + _REPLY_WAIT)
        if reply is None or "returncode" not in reply:
            return self._server_failed("it did not report the round")
        if reply.get("timed_out"):
            return {"outcome": "hang", "detail": f"no result within {timeout}s",
                    "stderr_tail": rounds.tail(reply["stderr"])}
        return rounds.outcome_of(reply["returncode"], reply["stdout"], reply["stderr"])

    def _reply(self, timeout):
        """The server's next line as a dict; None if none came within `timeout` s, the server
        closed its pipe, or the line is not a reply."""
        deadline = time.monotonic() + timeout
        searched = 0
        while (end := self._buffer.find(b"\n", searched)) < 0:
            searched = len(self._buffer)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._channel], [], [], left)[0]:
                return None
            chunk = os.read(self._channel, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None

    def _server_failed(self, what):
        """The server itself broke (it runs no round code, so this is not the round's
        outcome to hide): an error for this round, and a new server for the next."""
        proc, self._proc = self._proc, None
        if proc is None:  # closed meanwhile
            return {"outcome": "error", "detail": "the fork server was closed mid-round"}
        _terminate(proc)
        self._stderr.seek(0)
        err = self._stderr.read()
        self._close_files()
        return {"outcome": "error", "detail": f"the fork server failed: {what}",
                "stderr_tail": rounds.tail(err)}

    def _close_files(self):
        if self._channel is not None:
            os.close(self._channel)
            self._channel = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _terminate(server):
    """Ends the server: its SIGTERM handler kills the round it waits for, if any, first."""
    server.terminate()
    try:
        server.wait(timeout=_REPLY_WAIT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


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


def server_main(channel_fd):
    """`python -m mps_threadsafe _fork_server FD`: writes a hello line to FD, then reads
    {"entry", "spec", "timeout"} lines from stdin and runs each as a forked round, answering
    {"returncode", "timed_out", "stdout", "stderr"} on FD (Note [Forked rounds])."""
    import torch  # noqa: F401  (imported here once: what every round's fork saves)

    from . import serve, threads  # noqa: F401  (and the suites' own imports)

    channel = os.fdopen(int(channel_fd), "w", buffering=1)
    running = {"pid": None}

    def stop(signum, frame):  # the parent ends the run mid-round: the round goes first
        if running["pid"] is not None:
            _kill_unreaped(running["pid"])
        os._exit(1)

    signal.signal(signal.SIGTERM, stop)
    why = _unforkable_because()
    channel.write(json.dumps({"forkable": why is None, "why": why}) + "\n")
    if why is not None:
        return 0
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("entry") not in rounds.CHILD_ENTRIES:
            raise ValueError(f"fork server: no round entry point {request.get('entry')!r}")
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, out.fileno(), err.fileno(), channel.fileno())
            running["pid"] = pid
            status, timed_out = _wait(pid, request["timeout"])
            running["pid"] = None
            channel.write(json.dumps({
                "returncode": os.waitstatus_to_exitcode(status), "timed_out": timed_out,
                "stdout": _result_lines(out), "stderr": _tail_of(err)}) + "\n")
    return 0


def _wait(pid, timeout):
    """(wait status, timed out): waits for the round, killing it once `timeout` s are up. The
    SIGALRM handler runs while waitpid blocks (which then resumes: PEP 475) or just after."""
    state = {"status": None, "timed_out": False}

    def alarm(signum, frame):
        reaped = _kill_unreaped(pid)
        if reaped is None:
            state["timed_out"] = True
        elif reaped is not False:
            state["status"] = reaped

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(timeout, 0.001))
    try:
        while state["status"] is None:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:  # the handler reaped it, and kept its status
                break
            state["status"] = status
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return state["status"], state["timed_out"]


def _kill_unreaped(pid):
    """SIGKILLs our child `pid` if it is not reaped yet (so the number is still that process,
    never a reused one). Returns None when killed, its wait status if it had just ended (now
    reaped), False if it was reaped already."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    if done:
        return status
    os.kill(pid, signal.SIGKILL)
    return None


def _unforkable_because():
    """None if a forked child can use the device; else why not (a probe fork)."""
    pid = os.fork()
    if pid == 0:
        try:
            from .. import mps_sim
            os._exit(3 if mps_sim._is_in_bad_fork() else 0)
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    if code == 3:
        return "the mps_sim runtime was made before fork (at import: MPS_SIM_THREADSAFE=1?)"
    return f"a probe fork exited with status {code}"


def _result_lines(file):
    file.seek(0)
    return "".join(line.decode(errors="replace") for line in file
                   if line.startswith(rounds.RESULT_TAG.encode()))


def _tail_of(file):
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - _STDERR_KEPT))
    return file.read().decode(errors="replace")


def _child(request, out_fd, err_fd, channel_fd):
    """In the forked child: its own output files and random seeds, then the entry point; it
    ends the process itself (os._exit), and so does every way out of here, with Python's
    exit status rules for SystemExit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in (devnull, out_fd, err_fd, channel_fd):
            os.close(fd)
        import torch
        torch.seed()
        random.seed()
        sys.argv = [sys.argv[0], request["entry"], request["spec"]]
        from .. import __main__ as entries
        code = _exit_code(entries.main(sys.argv[1:]))
    except SystemExit as done:
        code = _exit_code(done.code)
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _exit_code(code):
    """What Python's exit does with sys.exit(code) or a returned code."""
    if code is None:
        return 0
    if isinstance(code, int):  # a bool too: sys.exit(True) is status 1
        return int(code) & 0xFF
    print(code, file=sys.stderr)
    return 1
