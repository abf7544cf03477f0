"""torch.save / torch.load of mps_sim tensors.

Note [Loading mps_sim storages]
torch.save tags each storage with its device ("mps_sim:0"), and torch.load (without
map_location) hands the tag to the deserializers of torch.serialization's registry, in
priority order, until one returns a storage. torch registers its PrivateUse1 deserializer at
priority 23, after MPS's at 21, and MPS's accepts any tag that *starts with* "mps": it claims
"mps_sim:0" and fails ("Storage device not recognized: mps") before the PrivateUse1 one is
asked. So mps_sim registers its own tagger and deserializer, with a priority before MPS's,
through the public torch.serialization.register_package. Its tag is the one
torch's PrivateUse1 tagger writes, so files saved before this module existed load too. A tag
naming another index (mps_sim:1) is refused as torch refuses a missing CUDA device.
"""

import torch

_DEVICE_TYPE = "mps_sim"
# torch's own priorities: cpu 10, cuda 20, mps 21 (which would claim "mps_sim..."), meta 22,
# privateuse1 23, hpu 24, xpu 25, mtia 26. Ours must come before 21 and must not equal a
# registered one (the registry is a sorted list of (priority, tagger, deserializer) tuples:
# a tie would compare the functions and raise).
_CANDIDATE_PRIORITIES = range(19, 10, -1)


def _tag(storage):
    if storage.device.type == _DEVICE_TYPE:
        index = storage.device.index
        return _DEVICE_TYPE if index is None else f"{_DEVICE_TYPE}:{index}"
    return None


def _deserialize(storage, location):
    if location != _DEVICE_TYPE and not location.startswith(_DEVICE_TYPE + ":"):
        return None
    device = torch.device(location)
    count = torch.mps_sim.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(
            f"Attempting to deserialize object on {location} but torch.mps_sim.device_count() is "
            f"{count}. Please use torch.load with map_location to map your storages to an "
            "existing device (map_location='mps_sim' or 'cpu').")
    target = torch.UntypedStorage(storage.nbytes(), device=torch.device(_DEVICE_TYPE, 0))
    return target.copy_(storage)


def register():
    """Adds mps_sim to torch.serialization's registry (once)."""
    # The registry itself is private (present in every torch this package supports); without
    # it the priority is still one torch does not use.
    registry = getattr(torch.serialization, "_package_registry", [])
    if any(tagger is _tag for _, tagger, _ in registry):
        return
    taken = {priority for priority, _, _ in registry}
    priority = next((p for p in _CANDIDATE_PRIORITIES if p not in taken), None)
    if priority is None:
        raise RuntimeError("mps_sim: no free torch.serialization priority before MPS's (21)")
    torch.serialization.register_package(priority, _tag, _deserialize)
