"""Bad input gets a clear exception, never an abort."""

import pytest
import torch

from conftest import DEVICE


def test_mixing_devices_names_the_argument_and_the_fix():
    a = torch.randn(4, 4, device=DEVICE)
    with pytest.raises(RuntimeError, match=r"(?s)mps_sim.*(cpu|device)"):
        a + torch.randn(4, 4)
    with pytest.raises(RuntimeError, match="mps_sim"):
        torch.mm(a, torch.randn(4, 4))


def test_cpu_scalars_mix_in():
    a = torch.ones(3, device=DEVICE)
    assert (a * torch.tensor(2.0)).cpu().eq(2).all()


def test_unknown_op_raises_not_implemented_naming_it():
    a = torch.randn(4, 4, device=DEVICE)
    with pytest.raises(NotImplementedError, match="aten::linalg_qr"):
        torch.linalg.qr(a)
    with pytest.raises(NotImplementedError, match="mps_sim"):
        torch.fft.fft(a)


def test_shape_errors_are_raised_on_the_calling_thread():
    with pytest.raises(RuntimeError, match="(?i)shape|size|mat1|dim"):
        torch.mm(torch.randn(2, 3, device=DEVICE), torch.randn(4, 5, device=DEVICE))


def test_bad_device_index():
    with pytest.raises(RuntimeError):
        torch.zeros(2, device="mps_sim:1")


def test_foreign_stream_is_refused_by_the_guard():
    with pytest.raises(RuntimeError, match="mps_sim"):
        torch.zeros(2, device=DEVICE).record_stream(torch.Stream(device="cpu"))


def test_elapsed_time_is_a_clear_error():
    with pytest.raises(ValueError, match="timestamps"):
        torch.mps_sim.Event(enable_timing=True)
