#pragma once

// The mixed threaded workload of the stress tests, the unprotected-mode child and the exit
// child: worker threads that encode kernels with every SyncType, add completion handlers,
// record and wait on events, hand buffers between streams (useBuffers), encode shared
// objects under their domains and wait for other streams; workers exit mid-run and new ones
// start in their slot; an extra thread synchronizes the device meanwhile. Every side effect
// is counted so the test can check that nothing was dropped.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "test_support.h"

namespace mpsts_test {

struct StressOptions {
  int slots = 8; // worker threads alive at once
  int lifetimes = 4; // workers started, one after another, in each slot
  int opsPerWorker = 500;
  bool deviceSyncThread = true;
  uint32_t seed = 1;
};

// Counts of what the workload did and saw; all filled by worker threads.
struct StressCounts {
  std::atomic<uint64_t> ops{0};
  std::atomic<uint64_t> kernelsEncoded{0}; // kernels this workload encoded
  std::atomic<uint64_t> kernelsRan{0}; // side effects of those kernels on the GPU threads
  std::atomic<uint64_t> handlersAdded{0};
  std::atomic<uint64_t> handlersRan{0};
  std::atomic<uint64_t> eventsRecorded{0};
  std::atomic<uint64_t> eventsSynchronized{0};
  std::atomic<uint64_t> bufferWrites{0};
  std::atomic<uint64_t> bufferReads{0};
  std::atomic<uint64_t> tornReads{0}; // a read that overlapped a write: ordering broken
  std::atomic<uint64_t> deviceSyncs{0};
  std::atomic<uint64_t> violationsCaught{0}; // MetalViolation thrown into a worker (Throw)
  std::atomic<uint64_t> workersFinished{0};
  std::mutex errorsMutex;
  std::vector<std::string> errors; // every exception a worker saw (first 20 kept)
  void error(const std::string& message);
};

// The shared state the workers use; lives as long as the runtime's work can reach it.
class StressWorkload {
 public:
  StressWorkload(Runtime& runtime, StressOptions options);
  ~StressWorkload();
  StressWorkload(const StressWorkload&) = delete;
  StressWorkload& operator=(const StressWorkload&) = delete;

  // Runs every slot's workers to the end (and the device-sync thread), joined under a
  // deadline. Returns when all workers are done; the caller synchronizes the device.
  void run();
  // One worker's life: `ops` operations on the thread's current stream.
  void worker(int slot, int ops, uint32_t seed);
  // Operations until `stop` (the exit child's endless workers).
  void workerUntil(int slot, const std::atomic<bool>& stop, uint32_t seed);

  StressCounts& counts() {
    return counts_;
  }
  // Whether every recorded event reports completion.
  bool allEventsComplete() const;

 private:
  struct SharedBuffer;
  void oneOp(int slot, Stream& mine, uint32_t roll, uint32_t roll2);

  Runtime& runtime_;
  StressOptions options_;
  StressCounts counts_;
  std::vector<std::unique_ptr<SharedBuffer>> buffers_;
  std::vector<std::unique_ptr<Event>> events_; // one per slot, shared with other slots
  std::vector<std::unique_ptr<sim::SharedObject>> graphs_;
  std::atomic<uint64_t> probeCalls_{0};
  std::atomic<uint64_t> writeSerial_{0};
};

} // namespace mpsts_test
