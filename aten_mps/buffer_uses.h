#pragma once

// Which streams used which buffer, and in which batch (Note [Batches and the timeline]).
//
// Two users:
// - cross-stream ordering (Stream::useBuffers): a read waits for the last write made on
//   another stream; a write also waits for the reads made since on other streams. This is what
//   makes a model moved to the device on one thread and run on others, or a result produced on
//   one thread and consumed on another, correct without user synchronization;
// - the allocator (PendingFrees): a freed buffer goes back to the pool only once every stream
//   that used it — all consumers, not only the allocating or the last one — has completed the
//   batch of that use. A stream may reuse its own buffers at once: its queue orders them.
//
// Note [Uses racing on the CPU]
// Ordering follows the order in which uses are encoded: a use encoded after another one (its
// thread saw that use happen, by a join, a queue, a lock, or the CPU copy of a result) is
// ordered after it on the GPU. Two threads encoding uses of one buffer at the same moment,
// with at least one writing, is a data race in the program, as it is with CUDA streams; the
// tracker then orders them in some order, or not at all.
//
// Note [Buffer-use lock order]
// The shard and free-list mutexes are leaves: nothing is called while holding them that could
// enter a queue, wait for a stream or take another lock of the runtime.

#include <array>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "stream.h"

namespace at::mps::threadsafe {

struct StreamUse {
  Stream* stream;
  uint64_t batch;
};

class BufferUseTracker {
 public:
  // Appends to `out` the uses on streams other than `self` that `uses` must wait for, at most
  // one per stream (its latest batch).
  void dependencies(const Stream& self, const BufferUse* uses, size_t count,
                    std::vector<StreamUse>& out) const;
  // Records that `self` uses these buffers in batch `batch`.
  void record(Stream& self, const BufferUse* uses, size_t count, uint64_t batch);
  // Forgets the buffer, returning every use still recorded for it (one per stream).
  std::vector<StreamUse> release(const void* buffer);
  size_t trackedBuffers() const;

 private:
  struct History {
    StreamUse lastWrite{nullptr, 0};
    std::vector<StreamUse> readsSinceWrite; // one entry per stream
  };
  struct Shard {
    mutable std::mutex mutex;
    std::unordered_map<const void*, History> buffers;
  };
  static constexpr size_t kShards = 32;
  Shard& shardOf(const void* buffer) const;
  mutable std::array<Shard, kShards> shards_;
};

// Freed buffers waiting until their users on other streams are done with them.
class PendingFrees {
 public:
  // `deferred` counts the buffers whose reuse had to wait (RuntimeStats::deferredFrees).
  explicit PendingFrees(Counter& deferred) : deferred_(deferred) {}

  // `uses` as returned by BufferUseTracker::release. Returns whether reuse is deferred, i.e.
  // some use was made on a stream that has not completed it yet.
  bool add(void* buffer, std::vector<StreamUse> uses);
  // Removes and returns the buffers `requester` may reuse now: those whose every use either
  // completed on the GPU or was made on `requester` itself (nullptr: completed uses only).
  std::vector<void*> takeReusable(const Stream* requester);
  size_t size() const;

  // Whether a use no longer stands in the way of `requester` reusing the buffer.
  static bool passed(const StreamUse& use, const Stream* requester);

 private:
  struct Entry {
    void* buffer;
    std::vector<StreamUse> uses;
  };
  Counter& deferred_;
  mutable std::mutex mutex_;
  std::vector<Entry> entries_;
};

} // namespace at::mps::threadsafe
