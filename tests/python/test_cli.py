"""The command line (python -m mps_threadsafe): one parser per command with its own help, and
every bad argument refused before any work, as one line on stderr with exit status 2
(Note [Validate before work] in mps_threadsafe/__main__.py)."""

import subprocess
import sys
import time

import pytest


def cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "mps_threadsafe", *args], capture_output=True,
                           text=True, timeout=timeout, env=env)


BAD_ARGUMENTS = [
    (["bench", "--threads", "0"], "thread count must be 1 or more"),
    (["bench", "--threads", "-1"], "thread count must be 1 or more"),
    (["bench", "--threads", "1,x"], "'x' is not a whole number"),
    (["bench", "--threads", "2,2"], "repeats a thread count"),
    (["stress", "--threads", "0"], "thread count must be 1 or more"),
    (["stress", "--duration", "-5"], "must be more than 0 seconds"),
    (["stress", "--duration", "0"], "must be more than 0 seconds"),
    (["stress", "--duration", "soon"], "is not a number of seconds"),
    (["bench", "--models", "nosuch"], "valid models: linear, mlp, transformer"),
    (["stress", "--models", "linear,nosuch"], "unknown model 'nosuch'"),
    (["bench", "--json", "/nonexistent/dir/x.json"], "folder /nonexistent/dir does not exist"),
    (["story", "--json", "/nonexistent/dir/x.json"], "does not exist"),
    (["bench", "--plot", "/nonexistent/dir/x.png"], "does not exist"),
    (["story", "--min-efficiency", "2"], "give a fraction in (0, 1]"),
    (["story", "--min-efficiency", "0"], "give a fraction in (0, 1]"),
    (["story", "--models", "linear"], "unrecognized arguments: --models"),
    (["bench", "--device", "gpu"], "invalid choice: 'gpu'"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    ([], "the following arguments are required: COMMAND"),
    (["stats", "--threads", "0"], "must be 1 or more"),
]


@pytest.mark.parametrize("args,reason", BAD_ARGUMENTS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_argument_is_one_line_and_exit_2_before_any_work(args, reason):
    started = time.monotonic()
    proc = cli(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert reason in lines[0], lines[0]
    assert lines[0].startswith("python -m mps_threadsafe")
    # Refused while parsing: no round ran (the quickest round takes seconds on mps_sim).
    assert time.monotonic() - started < 60


def test_json_path_that_is_a_folder_is_refused(tmp_path):
    proc = cli("bench", "--json", str(tmp_path))
    assert proc.returncode == 2 and "is a folder, not a file" in proc.stderr


def test_plot_without_matplotlib_is_refused_up_front(tmp_path):
    # A matplotlib that cannot be imported, first on the path.
    fake = tmp_path / "no_matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    import os
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    proc = cli("bench", "--plot", str(tmp_path / "b.png"), env=env)
    assert proc.returncode == 2, proc.stderr
    assert "--plot needs matplotlib" in proc.stderr and "pip install matplotlib" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command,has,lacks", [
    ("story", ["--min-efficiency", "story block"], ["--models", "--duration", "--plot"]),
    ("bench", ["--plot", "--models", "linear,mlp,transformer", "matmul_512"],
     ["--duration", "--min-efficiency"]),
    ("stress", ["--duration", "transformer_6x512", "at least once"], ["--plot",
                                                                      "--min-efficiency"]),
    ("stats", ["--model", "--iterations"], ["--plot"]),
])
def test_each_command_has_its_own_help(command, has, lacks):
    proc = cli(command, "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert text.startswith(f"usage: python -m mps_threadsafe {command}")
    for word in has:
        assert word in text, (word, proc.stdout)
    for word in lacks:
        assert word not in text, (word, proc.stdout)


def test_top_level_help_lists_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("story", "bench", "stress", "stats"):
        assert command in proc.stdout
