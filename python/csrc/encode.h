#pragma once

// How every mps_sim op reaches the GPU: on the calling thread's current stream, inside its
// serial queue, after ordering against other streams' uses of the same buffers, through the
// stream's leased coalescing encoder (Note [Encoding an op]).

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime.h"
#include "sim/sim_device.h"

namespace mps_sim {

namespace ts = at::mps::threadsafe;

// A cached kernel object shared by every stream (an MPSGraph executable, a pipeline state),
// with the op class whose serialization domain guards its encode.
struct SharedKernel {
  const char* opClass; // "layer_norm", "gatherViewTensor"
  std::shared_ptr<ts::sim::SharedObject> object;
};

// The cached object for `key`, created on first use (the MPSGraphCache / pipeline cache of the
// op). The cache is lock-protected; the objects it hands out are not, by design.
SharedKernel sharedKernel(const char* opClass, const std::string& key);

// Note [Encoding an op]
// Inside stream.dispatch: useBuffers (a read waits for another stream's last write, a write
// also for reads since), then the leased encoder encodes `kernel`; a shared kernel object is
// encoded with dispatchWith under its op class's domain, as MPS encodes a cached graph. The
// kernel runs later on the sim GPU thread, so it may only touch memory the uses name (and
// host memory it owns). `sync` then commits as MPS ops do: COMMIT_ADAPTIVE (only under memory
// pressure; the batch is otherwise submitted at the next synchronize, copy to the host or
// cross-stream request), COMMIT_AND_WAIT for blocking copies to the host.
void encodeKernel(const std::vector<ts::BufferUse>& uses, std::function<void()> kernel,
                  const SharedKernel* shared = nullptr,
                  ts::SyncType sync = ts::SyncType::COMMIT_ADAPTIVE);

// The stream ops encode on now (the thread policy or an explicit stream guard).
ts::Stream& currentStream();

} // namespace mps_sim
