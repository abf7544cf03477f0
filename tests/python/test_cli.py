"""The command line (python -m mps_threadsafe): one parser per command with its own help, and
every bad argument refused before any work, as one line on stderr with exit status 2
(Note [Validate before work] in mps_threadsafe/__main__.py)."""

import os
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
    (["stats", "--threads", "100000000"], "at most 256"),
    (["stats", "--iterations", "10000000000"], "at most 100,000"),
    (["stats", "--bogus"], "unrecognized arguments: --bogus"),
    (["stress", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["bench", "--threads", "2", "extra"], "unrecognized arguments: extra"),
]
COMMANDS = ("story", "bench", "stress", "stats")


def run_main(args, capsys):
    """The CLI in this process (every case of BAD_ARGUMENTS; a process each would cost a torch
    import each): exit status, stdout, stderr."""
    from mps_threadsafe.__main__ import main
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("args,reason", BAD_ARGUMENTS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_argument_is_one_line_and_exit_2(args, reason, capsys):
    code, out, err = run_main(args, capsys)
    assert code == 2, (code, out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert reason in lines[0], lines[0]
    # A command's error is said by that command's parser, so it points to the --help that
    # lists what the command takes.
    command = args[0] if args and args[0] in COMMANDS else None
    prog = f"python -m mps_threadsafe {command}" if command else "python -m mps_threadsafe"
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    assert lines[0].endswith(f"(see {prog} --help)"), lines[0]


@pytest.mark.parametrize("args", [["bench", "--threads", "0"], ["stress", "--duration", "0"],
                                  ["bench", "--models", "nosuch"],
                                  ["bench", "--json", "/nonexistent/dir/x.json"]],
                         ids=" ".join)
def test_bad_argument_from_the_shell_exits_2_before_any_work(args):
    started = time.monotonic()
    proc = cli(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    # Refused while parsing: no round ran (bench's default rounds take minutes).
    assert time.monotonic() - started < 90


def test_json_path_that_is_a_folder_is_refused(tmp_path, capsys):
    code, _, err = run_main(["bench", "--json", str(tmp_path)], capsys)
    assert code == 2 and "is a folder, not a file" in err


def test_json_path_in_a_read_only_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        code, _, err = run_main(["stress", "--json", str(folder / "x.json")], capsys)
        assert code == 2 and "is not writable" in err
    finally:
        folder.chmod(0o700)


def test_plot_without_matplotlib_is_refused_up_front(tmp_path):
    # A matplotlib that cannot be imported, first on the path.
    fake = tmp_path / "no_matplotlib" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
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
def test_each_command_has_its_own_help(command, has, lacks, capsys):
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())  # argparse wraps lines
    assert text.startswith(f"usage: python -m mps_threadsafe {command}")
    for word in has:
        assert word in text, (word, out)
    for word in lacks:
        assert word not in text, (word, out)


def test_top_level_help_lists_the_commands():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("story", "bench", "stress", "stats"):
        assert command in proc.stdout
