"""torch.save / torch.load of mps_sim tensors (Note [Loading mps_sim storages] in
mps_threadsafe/serialization.py): what is saved on the device loads back onto it without
map_location, as a CUDA tensor does, with the same values as on the CPU."""

import io

import pytest
import torch

from conftest import DEVICE


def round_trip(obj, **load_kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, **load_kwargs)


@pytest.mark.parametrize("weights_only", [True, False])
def test_tensor_loads_back_on_the_device_without_map_location(weights_only):
    cpu = torch.randn(5, 7)
    loaded = round_trip(cpu.to(DEVICE), weights_only=weights_only)
    assert loaded.device == torch.device(DEVICE, 0)
    assert torch.equal(loaded.cpu(), cpu)


def test_views_and_dtypes_keep_their_storage_sharing():
    base_cpu = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    base = base_cpu.to(DEVICE)
    saved = {"base": base, "view": base.t()[1:, ::2], "ints": torch.arange(7, device=DEVICE),
             "flags": torch.tensor([True, False, True], device=DEVICE)}
    loaded = round_trip(saved)
    assert {t.device for t in loaded.values()} == {torch.device(DEVICE, 0)}
    assert torch.equal(loaded["view"].cpu(), base_cpu.t()[1:, ::2])
    assert torch.equal(loaded["ints"].cpu(), torch.arange(7))
    assert loaded["flags"].cpu().tolist() == [True, False, True]
    # One storage, as saved: writing the loaded base shows through the loaded view.
    loaded["base"].fill_(-1)
    assert loaded["view"].cpu().eq(-1).all()


def test_module_state_dict_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randn(4, 6)
    expected = model(x)
    state = round_trip(model.to(DEVICE).state_dict())
    assert all(t.device.type == DEVICE for t in state.values())
    fresh = torch.nn.Linear(6, 3).to(DEVICE)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x.to(DEVICE)).cpu(), expected)


def test_map_location_still_works_both_ways():
    cpu = torch.randn(3, 4)
    assert round_trip(cpu.to(DEVICE), map_location="cpu").device.type == "cpu"
    moved = round_trip(cpu, map_location=DEVICE)
    assert moved.device.type == DEVICE and torch.equal(moved.cpu(), cpu)


def test_a_missing_device_index_is_a_clear_error():
    with pytest.raises(RuntimeError, match="mps_sim:1 but torch.mps_sim.device_count"):
        torch.serialization.default_restore_location(torch.UntypedStorage(8), "mps_sim:1")


def test_mps_tags_are_left_to_torch():
    # Our deserializer claims only mps_sim tags; "mps" still reaches torch's MPS one.
    from mps_threadsafe import serialization
    assert serialization._deserialize(torch.UntypedStorage(4), "mps") is None
    assert serialization._deserialize(torch.UntypedStorage(4), "mps_simulator") is None
