#pragma once

// Lock-free counters kept by streams, serialization domains and the runtime, and the plain
// snapshot structs they are read into. Counters are relaxed atomics: they are statistics,
// never used to order memory. A snapshot is not atomic across counters.

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

namespace at::mps::threadsafe {

enum class SyncType : uint8_t {
  NONE, // no commit
  COMMIT, // commit and flush the command buffer
  COMMIT_AND_WAIT, // commit and wait for it to finish
  COMMIT_AND_CONTINUE, // commit, keep encoding into a fresh underlying command buffer
  COMMIT_ADAPTIVE, // commit only when the allocator reports memory pressure
};
constexpr int kSyncTypeCount = 5;
const char* toString(SyncType type);

struct Counter {
  std::atomic<uint64_t> value{0};
  void add(uint64_t n = 1) noexcept {
    value.fetch_add(n, std::memory_order_relaxed);
  }
  uint64_t get() const noexcept {
    return value.load(std::memory_order_relaxed);
  }
};

// Raises `value` to at least `candidate`.
void raiseToAtLeast(std::atomic<uint64_t>& value, uint64_t candidate) noexcept;

struct StreamCounters {
  Counter dispatches; // entries into the serial queue
  Counter queueWaits; // entries that found the queue busy
  Counter queueWaitNs;
  Counter opsEncoded; // encoder leases + graph encodes (see Stream::noteEncodedOp)
  Counter encodersCreated;
  Counter encodersCoalesced; // lease/commandEncoder() calls served by the open encoder
  Counter commits[kSyncTypeCount]; // synchronize() calls by kind
  Counter commandBuffersSubmitted; // batches actually committed to the queue
  Counter crossStreamWaits; // GPU waits encoded on another stream's timeline
  Counter closeRequestsServed; // batches committed because another stream needed them
  Counter gpuErrors;
  Counter threadsBound; // times the thread policy handed this stream to a thread
  Counter overlappedDispatches; // dispatches that began while another stream was encoding
};

struct DomainCounters {
  Counter acquisitions;
  Counter waits; // acquisitions that found the domain held
  Counter waitNs;
};

struct RuntimeCounters {
  Counter contractViolations; // ContractErrors raised
  Counter deferredFrees; // freed buffers whose reuse waited on another stream
  Counter threadsBound;
  Counter threadsReleased;
  Counter sharedStreamBindings; // bindings made while every pool stream was taken
  Counter deviceSynchronizes;
  std::atomic<uint64_t> activeStreams{0}; // streams inside their serial queue right now
  std::atomic<uint64_t> maxActiveStreams{0}; // high-water mark of activeStreams
};

struct StreamStats {
  int id = 0;
  uint64_t dispatches = 0, queueWaits = 0, queueWaitNs = 0, opsEncoded = 0;
  uint64_t encodersCreated = 0, encodersCoalesced = 0;
  uint64_t commits[kSyncTypeCount] = {};
  uint64_t commandBuffersSubmitted = 0, crossStreamWaits = 0, closeRequestsServed = 0;
  uint64_t gpuErrors = 0, threadsBound = 0, overlappedDispatches = 0;
  uint64_t submittedBatch = 0, completedBatch = 0;
  int owners = 0;
};

struct DomainStats {
  std::string name;
  uint64_t acquisitions = 0, waits = 0, waitNs = 0;
};

struct RuntimeStats {
  bool threadsafe = false;
  uint64_t contractViolations = 0, deferredFrees = 0, threadsBound = 0, threadsReleased = 0;
  uint64_t sharedStreamBindings = 0, deviceSynchronizes = 0;
  uint64_t activeStreams = 0, maxActiveStreams = 0;
  std::vector<StreamStats> streams; // streams created so far
  std::vector<DomainStats> domains; // domains created so far (live and retired, merged by name)
};

} // namespace at::mps::threadsafe
