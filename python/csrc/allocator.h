#pragma once

// The mps_sim allocator: host memory standing in for MTLBuffers, with the runtime's rules for
// reuse. A freed buffer is released from the buffer-use tracker and parked in PendingFrees; it
// is handed out again only once every stream that used it has completed that use, or at once
// to the stream that was its only user (its queue orders the reuse) — Note [Reuse by stream].

#include <c10/core/Allocator.h>

#include <cstddef>

namespace mps_sim {

struct AllocatorStats {
  size_t allocatedBytes = 0; // live blocks handed out
  size_t cachedBytes = 0; // free blocks kept for reuse
  size_t pendingFrees = 0; // freed blocks still used by some stream
  size_t hostAllocations = 0; // blocks taken from the host so far
  size_t reuses = 0; // allocations served from the cache
  size_t hostFrees = 0; // cached blocks returned to the host by emptyCache
};

c10::Allocator* allocator();
AllocatorStats allocatorStats();
// Returns to the host every cached block no stream can still use (torch.mps_sim.empty_cache;
// Note [Emptying the cache] in allocator.cpp).
void emptyCache();

} // namespace mps_sim
