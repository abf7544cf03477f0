#pragma once

// The process-wide runtime behind the mps_sim device, and the device-side names ops share.
//
// Note [Runtime lifetime] (runtime.h) applies: the runtime and its SimDevice are created once,
// on first use, and deliberately leaked, so no destructor runs during interpreter exit while
// the sim's GPU and handler threads may still be executing kernels.

#include <c10/core/Device.h>

#include "runtime.h"
#include "sim/sim_device.h"

namespace mps_sim {

namespace ts = at::mps::threadsafe;

// Initial settings, read from the environment on first use:
//   MPS_SIM_THREADSAFE=1   thread policy on (each thread gets its own pool stream)
//   MPS_SIM_UNSAFE=1       every runtime protection off (protections.h), for demonstrations
//   MPS_SIM_VIOLATIONS=abort|throw|count   what the sim does on a Metal-rule breach
//   MPS_SIM_RACE_WINDOW_US=N  linger N us at every sim race point (makes races reproducible)
ts::Runtime& runtime();
ts::sim::SimDevice& simDevice();

inline c10::Device device() {
  return c10::Device(c10::DeviceType::PrivateUse1, 0);
}

} // namespace mps_sim
