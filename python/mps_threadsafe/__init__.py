"""mps_threadsafe: the thread-safe MPS runtime's Python side.

Importing this package registers the `mps_sim` PyTorch device (PrivateUse1 renamed), backed by
the runtime with its Metal-contract-checking sim backend, as `torch.mps_sim`:

    import torch, mps_threadsafe
    torch.mps_sim.set_threadsafe(True)      # or MPS_SIM_THREADSAFE=1
    x = torch.randn(4, 256, device="mps_sim")

Many threads, one model: `mps_threadsafe.BatchedModule(model, max_batch=8, workers=2)` batches
their calls dynamically and runs the batches on parallel streams (batching.py).

The suites: `python -m mps_threadsafe {story,bench,stress,serve-bench} --device {mps_sim,mps,cpu}`.
"""

import torch

from . import _C
from . import mps_sim as _mps_sim_module
from . import serialization as _serialization
from .mps_sim import (  # noqa: F401  (re-exported)
    WorkInFlightError,
    set_protections,
    protections,
    set_violation_policy,
    violation_policy,
)
from .suites.stats import stats_summary  # noqa: F401  (re-exported; keys: docs/stats.md)
from .batching import BatchedModule, BatcherClosedError, PadSequences  # noqa: F401

__all__ = ["set_protections", "protections", "set_violation_policy", "violation_policy",
           "WorkInFlightError", "register", "stats_summary", "BatchedModule",
           "BatcherClosedError", "PadSequences"]


def register():
    """Registers the mps_sim device with torch once; later calls do nothing."""
    if getattr(torch, "mps_sim", None) is _mps_sim_module:
        return
    current = torch._C._get_privateuse1_backend_name()
    if current != "mps_sim":
        if current != "privateuseone":
            raise RuntimeError(
                f"PrivateUse1 is already registered as '{current}' by another extension; "
                "mps_sim needs it")
        torch.utils.rename_privateuse1_backend("mps_sim")
    torch._register_device_module("mps_sim", _mps_sim_module)
    torch.utils.generate_methods_for_privateuse1_backend(
        for_tensor=True, for_module=True, for_packed_sequence=True, for_storage=True)
    _serialization.register()  # Note [Loading mps_sim storages]


register()
