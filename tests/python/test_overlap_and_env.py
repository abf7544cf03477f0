"""Findings of the hostile-user review: partly overlapping in-place ops must fail as on the CPU
(never compute garbage), and bad environment settings must be refused, never hang."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import DEVICE


def cpu_error(fn):
    a = torch.arange(16.).reshape(4, 4)
    with pytest.raises(RuntimeError) as caught:
        fn(a)
    return str(caught.value)


def test_copy_between_overlapping_parts_of_one_tensor_is_refused_at_the_call():
    # Note [Host aliases share storages]: the CPU refuses this; mps_sim used to fill every row
    # with row 0.
    message = cpu_error(lambda a: a[1:].copy_(a[:-1]))
    a = torch.arange(16., device=DEVICE).reshape(4, 4)
    with pytest.raises(RuntimeError, match="single memory location|overlap") as caught:
        a[1:] = a[:-1]
    assert "memory location" in message
    assert torch.equal(a.cpu(), torch.arange(16.).reshape(4, 4)), "the refused copy wrote"
    with pytest.raises(RuntimeError):
        a.copy_(a.t())


@pytest.mark.parametrize("op", [
    lambda a: a.add_(a.t()),
    lambda a: torch.add(a, a.t(), out=a),
    lambda a: a.view(-1)[1:10].add_(a.view(-1)[0:9]),
])
def test_in_place_op_on_a_partly_overlapping_input_fails_instead_of_computing_garbage(op):
    cpu_error(op)  # the reference: the CPU refuses it
    a = torch.arange(16., device=DEVICE).reshape(4, 4)
    with pytest.raises(RuntimeError, match="memory location|overlap"):
        op(a)
        a.cpu()  # the op's kernel runs on the sim GPU: its error arrives with the result
    # Nothing else is affected: fresh work on this thread is right.
    b = torch.arange(4., device=DEVICE) * 2
    assert torch.equal(b.cpu(), torch.arange(4.) * 2)


def test_a_full_overlap_is_still_fine():
    a = torch.arange(16., device=DEVICE).reshape(4, 4)
    a.add_(a)
    a.copy_(a)
    assert torch.equal(a.cpu(), torch.arange(16.).reshape(4, 4) * 2)


@pytest.mark.parametrize("name,value", [("MPS_SIM_RACE_WINDOW_US", "-5"),
                                        ("MPS_SIM_RACE_WINDOW_US", "abc"),
                                        ("MPS_SIM_PRESSURE_BYTES", "-5")])
def test_a_bad_environment_setting_is_refused_by_name(name, value):
    code = ("import torch, mps_threadsafe\n"
            "try:\n"
            "    (torch.ones(2, device='mps_sim') + 1).cpu()\n"
            "except RuntimeError as e:\n"
            "    print('REFUSED', e)\n")
    env = dict(os.environ, **{name: value})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and name in done.stdout, done.stdout + done.stderr[-2000:]
