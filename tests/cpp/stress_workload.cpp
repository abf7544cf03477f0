#include "stress_workload.h"

#include <random>

namespace mpsts_test {
namespace {

constexpr int kBuffers = 8;
constexpr int kWords = 64;
constexpr int kGraphs = 2;

// Weighted over every SyncType: NONE 30, COMMIT 25, COMMIT_AND_CONTINUE 20, ADAPTIVE 15,
// COMMIT_AND_WAIT 10.
SyncType pickSync(uint32_t roll) {
  roll %= 100;
  if (roll < 30) {
    return SyncType::NONE;
  }
  if (roll < 55) {
    return SyncType::COMMIT;
  }
  if (roll < 75) {
    return SyncType::COMMIT_AND_CONTINUE;
  }
  if (roll < 90) {
    return SyncType::COMMIT_ADAPTIVE;
  }
  return SyncType::COMMIT_AND_WAIT;
}

} // namespace

struct StressWorkload::SharedBuffer {
  // Plain memory on purpose: a write and a read the runtime failed to order overlap on two
  // GPU threads, which the torn-read check sees and ThreadSanitizer reports.
  uint64_t words[kWords] = {};
  // The CPU-side hand-off: a thread encodes its use only after the previous user's encode
  // returned, as a program that passes a tensor from one thread to another does. This gives
  // every two uses an order for the runtime to keep; truly simultaneous uses from two threads
  // have none (see the report on Stream::useBuffers).
  std::mutex handoff;
};

void StressCounts::error(const std::string& message) {
  std::lock_guard<std::mutex> lock(errorsMutex);
  if (errors.size() < 20) {
    errors.push_back(message);
  }
}

StressWorkload::StressWorkload(Runtime& runtime, StressOptions options)
    : runtime_(runtime), options_(options) {
  for (int i = 0; i < kBuffers; ++i) {
    buffers_.push_back(std::make_unique<SharedBuffer>());
  }
  for (int i = 0; i < options_.slots; ++i) {
    events_.push_back(std::make_unique<Event>());
  }
  for (int i = 0; i < kGraphs; ++i) {
    graphs_.push_back(std::make_unique<sim::SharedObject>("stress graph " + std::to_string(i)));
  }
  runtime_.setMemoryPressureProbe([this] { return ++probeCalls_ % 3 == 0; });
}

StressWorkload::~StressWorkload() {
  runtime_.setMemoryPressureProbe(nullptr);
}

bool StressWorkload::allEventsComplete() const {
  for (const auto& event : events_) {
    if (!event->query()) {
      return false;
    }
  }
  return true;
}

void StressWorkload::oneOp(int slot, Stream& mine, uint32_t roll, uint32_t roll2) {
  const uint32_t kind = roll % 100;
  auto countedKernel = [this] {
    counts_.kernelsEncoded.fetch_add(1, std::memory_order_relaxed);
    return [this] {
      spinFor(std::chrono::microseconds(5)); // some GPU time, so queues overlap
      counts_.kernelsRan.fetch_add(1, std::memory_order_relaxed);
    };
  };
  if (kind < 30) { // plain kernels, coalesced, then any SyncType
    mine.dispatch([&] {
      for (uint32_t i = 0; i <= roll2 % 3; ++i) {
        encodeKernel(mine, countedKernel());
      }
      mine.synchronize(pickSync(roll2 >> 8));
    });
  } else if (kind < 40) { // a shared object, encoded under its domain
    sim::SharedObject& graph = *graphs_[roll2 % kGraphs];
    mine.dispatch([&] {
      DomainGuard guard(runtime_.domains().forObject(&graph, "graph"),
                        runtime_.protections().domains);
      EncoderLease lease = mine.leaseEncoder();
      sim::simEncoder(lease.encoder()).dispatchWith(graph, countedKernel());
    });
  } else if (kind < 50) { // a completion handler, with any SyncType (NONE: a later commit)
    mine.dispatch([&] {
      encodeKernel(mine, countedKernel());
      counts_.handlersAdded.fetch_add(1, std::memory_order_relaxed);
      mine.addCompletedHandler([this](CommandBufferStatus, const std::string&) {
        counts_.handlersRan.fetch_add(1, std::memory_order_relaxed);
      });
      mine.synchronize(pickSync(roll2 >> 8));
    });
  } else if (kind < 60) { // write a buffer other streams read
    SharedBuffer& buffer = *buffers_[roll2 % kBuffers];
    const uint64_t value = writeSerial_.fetch_add(1, std::memory_order_relaxed) + 1;
    std::lock_guard<std::mutex> handoff(buffer.handoff);
    mine.dispatch([&] {
      BufferUse use{&buffer, BufferUse::Access::Write};
      mine.useBuffers(&use, 1);
      counts_.kernelsEncoded.fetch_add(1, std::memory_order_relaxed);
      encodeKernel(mine, [this, &buffer, value] {
        for (int w = 0; w < kWords; ++w) {
          buffer.words[w] = value;
          if (w == kWords / 2) {
            std::this_thread::yield(); // a reader let in now would see half of the write
          }
        }
        counts_.kernelsRan.fetch_add(1, std::memory_order_relaxed);
      });
      mine.synchronize((roll2 >> 8) % 2 == 0 ? SyncType::NONE : SyncType::COMMIT);
    });
    counts_.bufferWrites.fetch_add(1, std::memory_order_relaxed);
  } else if (kind < 72) { // read a buffer another stream may have written
    SharedBuffer& buffer = *buffers_[roll2 % kBuffers];
    std::lock_guard<std::mutex> handoff(buffer.handoff);
    mine.dispatch([&] {
      BufferUse use{&buffer, BufferUse::Access::Read};
      mine.useBuffers(&use, 1);
      counts_.kernelsEncoded.fetch_add(1, std::memory_order_relaxed);
      encodeKernel(mine, [this, &buffer] {
        uint64_t first = buffer.words[0];
        std::this_thread::yield();
        for (int w = 1; w < kWords; ++w) {
          if (buffer.words[w] != first) {
            counts_.tornReads.fetch_add(1, std::memory_order_relaxed);
            break;
          }
        }
        counts_.kernelsRan.fetch_add(1, std::memory_order_relaxed);
      });
      mine.synchronize(pickSync(roll2 >> 8));
    });
    counts_.bufferReads.fetch_add(1, std::memory_order_relaxed);
  } else if (kind < 84) { // events: record ours, wait for or look at another slot's
    Event& own = *events_[static_cast<size_t>(slot)];
    own.record(mine);
    counts_.eventsRecorded.fetch_add(1, std::memory_order_relaxed);
    Event& other = *events_[roll2 % events_.size()];
    if ((roll2 >> 8) % 2 == 0) {
      own.synchronize();
      counts_.eventsSynchronized.fetch_add(1, std::memory_order_relaxed);
      other.wait(mine);
    } else {
      other.wait(mine);
      (void)other.query();
    }
  } else if (kind < 90) { // wait for whatever another stream has encoded
    Stream& other = runtime_.stream(1 + static_cast<int>(roll2 % runtime_.poolSize()));
    waitStream(mine, other);
  } else { // wait for our own work
    mine.dispatch([&] { mine.synchronize(SyncType::COMMIT_AND_WAIT); });
  }
  counts_.ops.fetch_add(1, std::memory_order_relaxed);
}

void StressWorkload::worker(int slot, int ops, uint32_t seed) {
  std::mt19937 rng(seed);
  Stream& mine = runtime_.currentStream();
  for (int i = 0; i < ops; ++i) {
    uint32_t roll = rng();
    uint32_t roll2 = rng();
    try {
      oneOp(slot, mine, roll, roll2);
    } catch (const sim::MetalViolation& violation) {
      counts_.violationsCaught.fetch_add(1, std::memory_order_relaxed);
      counts_.error(std::string("MetalViolation: ") + violation.what());
    } catch (const std::exception& e) {
      counts_.error(e.what());
    }
  }
  counts_.workersFinished.fetch_add(1, std::memory_order_relaxed);
  // Leaving: the thread policy commits this thread's open batch and gives its stream back.
}

void StressWorkload::workerUntil(int slot, const std::atomic<bool>& stop, uint32_t seed) {
  std::mt19937 rng(seed);
  Stream& mine = runtime_.currentStream();
  while (!stop.load(std::memory_order_relaxed)) {
    uint32_t roll = rng();
    uint32_t roll2 = rng();
    try {
      oneOp(slot, mine, roll, roll2);
    } catch (const std::exception& e) {
      counts_.error(e.what());
    }
  }
}

void StressWorkload::run() {
  std::atomic<bool> stopSync{false};
  ThreadGroup syncer;
  if (options_.deviceSyncThread) {
    syncer.spawn([&] {
      while (!stopSync.load()) {
        runtime_.synchronizeDevice();
        counts_.deviceSyncs.fetch_add(1, std::memory_order_relaxed);
        std::this_thread::sleep_for(std::chrono::microseconds(500)); // pacing only
      }
    });
  }
  ThreadGroup slots;
  for (int slot = 0; slot < options_.slots; ++slot) {
    slots.spawn([this, slot] {
      // Workers of one slot follow each other: each exits mid-run of the others.
      std::mt19937 lengths(options_.seed * 7919 + static_cast<uint32_t>(slot));
      for (int life = 0; life < options_.lifetimes; ++life) {
        int ops = options_.opsPerWorker / 2 +
            static_cast<int>(lengths() % static_cast<uint32_t>(options_.opsPerWorker + 1));
        uint32_t seed = options_.seed * 1000003u + static_cast<uint32_t>(slot * 131 + life);
        std::thread worker([this, slot, ops, seed] { this->worker(slot, ops, seed); });
        worker.join();
      }
    });
  }
  std::vector<std::string> errors = slots.join(std::chrono::milliseconds(240000), "stress slots");
  stopSync = true;
  std::vector<std::string> syncErrors = syncer.join(std::chrono::milliseconds(60000), "device sync");
  for (const auto& error : errors) {
    counts_.error("slot: " + error);
  }
  for (const auto& error : syncErrors) {
    counts_.error("synchronizeDevice thread: " + error);
  }
}

} // namespace mpsts_test
