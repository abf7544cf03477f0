#pragma once

// The mps_sim allocator: host memory standing in for MTLBuffers, with the runtime's rules for
// reuse. A freed buffer is released from the buffer-use tracker and parked in PendingFrees; it
// is handed out again only once every stream that used it has completed that use, or at once
// to the stream that was its only user (its queue orders the reuse) — Note [Reuse by stream].

#include <c10/core/Allocator.h>
#include <c10/core/Storage.h>

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
// Whether `storage` owns an allocator block and spans every byte of it that anything can read:
// its DataPtr is the block the allocator handed out, and its nbytes are the bytes that
// allocation asked for (the rest of the block, up to its bucket size, is never reachable).
// False for anything else, e.g. a storage whose nbytes changed without a new block.
// Note [Writes that cover their buffer] in tensor_uses.h.
bool storageSpansItsBlock(const c10::Storage& storage);
AllocatorStats allocatorStats();
// Moves the pending frees whose every use has completed to the cache (Note [Pending frees are
// settled when looked at]).
void settleCompletedFrees();
// runtime().synchronizeDevice(), then settleCompletedFrees (also when it raises a GPU error):
// with nothing left running, no free is pending any more.
void synchronizeDeviceAndSettleFrees();
// Returns to the host every cached block no stream can still use (torch.mps_sim.empty_cache;
// Note [Emptying the cache] in allocator.cpp).
void emptyCache();

} // namespace mps_sim
