"""The device a suite runs on, behind one small interface, so the same suite code runs on
real MPS (with the patched wheel), on mps_sim, and on the CPU (where the thread-safety knobs
are no-ops).

Modes (Note [What "off" means] in mps_threadsafe/mps_sim.py):
- "on":     set_threadsafe(True): each thread encodes on its own stream; protections on.
- "off":    set_threadsafe(False): upstream's policy, every thread on the default stream;
            on mps_sim the runtime's protections stay on (safe, serialized).
- "lock":   "off" plus one process-wide Python lock held around each model call and the read
            of its result (threads.py): what users do today to stay safe.
- "unsafe": set_threadsafe(False) and, on mps_sim, every protection off: what upstream
            PyTorch does on MPS. On real MPS this is simply set_threadsafe(False) (an
            unpatched torch has no protections to switch off).
"""

import torch

MODES = ("on", "off", "lock", "unsafe")


class Device:
    def __init__(self, name):
        if name not in ("mps_sim", "mps", "cpu"):
            raise ValueError(f"unknown device '{name}' (mps_sim, mps or cpu)")
        self.name = name
        if name == "mps_sim":
            import mps_threadsafe  # noqa: F401  registers torch.mps_sim
            # Each sim queue executes its kernels on one core, as one GPU queue would; ATen's
            # intra-op threads would otherwise oversubscribe the machine.
            torch.set_num_threads(1)
            self.module = torch.mps_sim
        elif name == "mps":
            if not torch.backends.mps.is_available():
                raise RuntimeError("device 'mps' is not available on this machine")
            self.module = torch.mps
        else:
            self.module = None

    @property
    def torch_device(self):
        return torch.device(self.name)

    def has_threadsafe_api(self):
        return self.module is not None and hasattr(self.module, "set_threadsafe")

    def set_mode(self, mode):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
        self.mode = mode
        if self.name == "mps_sim":
            self.module.set_protections(mode != "unsafe")
        if self.has_threadsafe_api():
            self.module.set_threadsafe(mode == "on")
        elif mode == "on" and self.name == "mps":
            raise RuntimeError("this torch has no torch.mps.set_threadsafe: install the patched "
                               "wheel (./build.sh wheel) to run mode 'on' on mps")

    def arm_race_meetings(self, timeout_us=120_000_000):
        """In mode "unsafe" on mps_sim, makes the threads' races certain from now on, whatever
        the machine's load (Note [Race meetings] in aten_mps/sim/inside.cpp): a thread inside
        a command buffer, encoder or shared kernel object stays there until another thread
        tries that object. Called once every thread has set up (single-threaded work would
        only wait out the timeout). A no-op in every other mode and device."""
        if self.name != "mps_sim" or getattr(self, "mode", None) != "unsafe":
            return
        for point in ("command_buffer", "encoder", "shared_object"):
            self.module.set_race_meeting(point, timeout_us)

    def sync_own_stream(self):
        """Waits for the work of the calling thread's stream only (not a device-wide sync)."""
        if self.module is None:
            return
        current = getattr(self.module, "current_stream", None)
        if current is not None:
            current().synchronize()
        else:
            self.module.synchronize()

    def stream_id(self):
        current = getattr(self.module, "current_stream", None) if self.module else None
        return current().stream_id if current is not None else 0

    def stats(self):
        if self.module is not None and hasattr(self.module, "threadsafe_stats"):
            return self.module.threadsafe_stats()
        return {}

    def release_thread_stream(self):
        release = getattr(self.module, "release_thread_stream", None) if self.module else None
        if release is not None:
            release()
