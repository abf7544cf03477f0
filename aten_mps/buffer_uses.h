#pragma once

// Which streams used which buffer, and in which batch (Note [Batches and the timeline]).
//
// Two users:
// - cross-stream ordering (Stream::useBuffers): a read waits for the writes made on other
//   streams; a write also waits for the reads made since on other streams. This is what
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
// Note [Unordered writes are a set]
// A buffer's history holds every write (and every read) since the last ordering point, at
// most one per stream (its latest batch), not a single "last write": eight threads filling
// disjoint rows of one preallocated tensor write the same buffer from eight streams, and the
// reader after join() must wait for all eight (issue 8.1; with one `lastWrite` the writers
// overwrote each other's record and the reader waited for one of them). A use is handled in
// two steps, each atomic per buffer under its shard lock:
// 1. dependOnAndRecord: read the uses this one must wait for (a read: the writes on other
//    streams; a write: the writes and reads on other streams) and record this use in the open
//    batch, in the same critical section. So of two uses of a buffer, the later one always
//    sees the earlier one; no use is lost between "read the history" and "record".
// 2. settle, once the GPU waits are encoded (they may have committed our batch: Note [Closing
//    a batch on request]): raise this use to the batch it is really encoded in, and for a
//    write, drop the uses it now waits for: they are ordered before it (the ordering point),
//    and whoever orders after this write orders after them. Uses recorded meanwhile by other
//    streams stay: they are unordered with this write.
// The waits themselves happen between the two steps, with no lock held.
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
  // Step 1 of Note [Unordered writes are a set]: appends to `out` the uses on streams other
  // than `self` that `uses` must wait for (at most one per stream, its latest batch), and
  // records `uses` on `self` in batch `batch`, atomically per buffer.
  // `ownWrites` (optional): this stream's own earlier writes of the buffers used (a write that
  // covers its buffer excepted), which its queue orders but whose failure it must still see
  // (Note [GPU errors belong to batches]): every batch, not the latest per stream, since a
  // clean later batch says nothing of a failed earlier one (an op reading a tensor lost in
  // batch 5 and one written in batch 7 must inherit batch 5's failure).
  // `previous` (optional): per use, the batch of `self`'s entry it replaced (0: none), what
  // undoRecord needs.
  // `inherited` (optional): the writes on other streams whose failure the uses inherit: those
  // a read or a partial write waits for, not the ordering-only waits of Note [Overwriting a
  // failed write]; every batch, like `ownWrites`.
  void dependOnAndRecord(Stream& self, const BufferUse* uses, size_t count, uint64_t batch,
                         std::vector<StreamUse>& out, std::vector<StreamUse>* ownWrites = nullptr,
                         std::vector<uint64_t>* previous = nullptr,
                         std::vector<StreamUse>* inherited = nullptr);
  // Takes back what dependOnAndRecord recorded in batch `batch` when the op is abandoned
  // before it was encoded (a wait raised): a use left behind would name a batch that may
  // never be committed, and a free of the buffer would wait for it forever.
  void undoRecord(Stream& self, const BufferUse* uses, size_t count, uint64_t batch,
                  const std::vector<uint64_t>& previous);
  // Step 2: `uses` are encoded in batch `batch` (>= the one recorded), after GPU waits for
  // `waited` (what step 1 returned).
  void settle(Stream& self, const BufferUse* uses, size_t count, uint64_t batch,
              const std::vector<StreamUse>& waited);
  // What dependOnAndRecord would return, without recording (diagnostics and tests).
  void dependencies(const Stream& self, const BufferUse* uses, size_t count,
                    std::vector<StreamUse>& out) const;
  // Records uses that wait for nothing (record_stream: "this stream also uses the buffer"):
  // they join the sets and order nothing before them.
  void record(Stream& self, const BufferUse* uses, size_t count, uint64_t batch);
  // Forgets the buffer, returning every use still recorded for it (one per stream).
  std::vector<StreamUse> release(const void* buffer);
  size_t trackedBuffers() const;

 private:
  // Note [Unordered writes are a set]: both sets hold at most one entry per stream.
  struct History {
    std::vector<StreamUse> writes; // since the last ordering point
    std::vector<StreamUse> reads; // since the last ordering point
  };
  static void dependenciesOf(const History& history, const Stream& self, const BufferUse& use,
                             std::vector<StreamUse>& out, std::vector<StreamUse>* inherited);
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

  // `uses` as returned by BufferUseTracker::release; `owner`: the stream of the thread that
  // frees it (nullptr: none). Returns whether reuse is really deferred, i.e. some use was made
  // on a stream other than `owner` that has not completed it yet: `owner` itself may reuse
  // the buffer at once (its queue orders the uses), so waiting only on it is no deferral and
  // is not counted (issue 8.8).
  bool add(void* buffer, std::vector<StreamUse> uses, const Stream* owner = nullptr);
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
