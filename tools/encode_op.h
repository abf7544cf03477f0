#pragma once

// How an op encodes a kernel through the runtime: the pattern every patched ATen MPS op
// follows, written once for the tools. Inside the stream's serial queue: order against other
// streams' uses of the op's buffers, lease the coalescing encoder, encode; for a kernel that
// uses a shared cached object (an MPSGraph, a pipeline state), hold the object's
// serialization domain around that encode only (Note [Domain lock order]: queue -> domain).

#include <cstdint>
#include <functional>
#include <string_view>
#include <utility>

#include "aten_mps/runtime.h"
#include "aten_mps/sim/sim_device.h"

namespace mpsts::tools {

namespace ts = at::mps::threadsafe;

inline ts::BufferUse reads(const void* buffer) {
  return {buffer, ts::BufferUse::Access::Read};
}
inline ts::BufferUse writes(const void* buffer) {
  return {buffer, ts::BufferUse::Access::Write};
}

// One kernel on `stream`; `kernel` runs later on the sim device's GPU thread.
inline void encodeKernel(ts::Stream& stream, const ts::BufferUse* uses, size_t useCount,
                         std::function<void()> kernel) {
  stream.dispatch([&] {
    if (useCount > 0) {
      stream.useBuffers(uses, useCount); // before the lease: it may wait for another stream
    }
    ts::EncoderLease lease = stream.leaseEncoder();
    ts::sim::simEncoder(lease.encoder()).dispatch(std::move(kernel));
  });
}

// One kernel that uses `object`, shared by every stream, under the domain of its op class
// (the domains of `runtime`, the owner of `stream`).
inline void encodeSharedKernel(ts::Runtime& runtime, ts::Stream& stream, const ts::BufferUse* uses,
                               size_t useCount, ts::sim::SharedObject& object,
                               std::string_view opClass, std::function<void()> kernel) {
  stream.dispatch([&] {
    if (useCount > 0) {
      stream.useBuffers(uses, useCount);
    }
    ts::EncoderLease lease = stream.leaseEncoder();
    // Taken after useBuffers: waiting for another stream while holding a domain is refused.
    ts::DomainGuard guard(runtime.domains().forClass(opClass), runtime.protections().domains);
    ts::sim::simEncoder(lease.encoder()).dispatchWith(object, std::move(kernel));
  });
}

// synchronize() belongs on the queue too (Note [On the queue]).
inline void synchronize(ts::Stream& stream, ts::SyncType type) {
  stream.dispatch([&] { stream.synchronize(type); });
}

} // namespace mpsts::tools
