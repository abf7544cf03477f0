#pragma once

// What a SimDevice shares with every object it makes: settings, counters, the violation log,
// the quarantine, the completion-handler thread and the list of live GPU queues. Objects hold
// it by shared_ptr, so an object that outlives its device never dangles (see
// Note [Sim lifetime] in sim_device.cpp).

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../function_ref.h"
#include "job_thread.h"
#include "quarantine.h"
#include "sim_device.h"

namespace at::mps::threadsafe::sim {

class GpuQueue;

constexpr size_t kRacePointCount = static_cast<size_t>(RacePoint::kCount);

// Statistics only: relaxed atomics, never used to order memory.
struct SimCounters {
  std::atomic<uint64_t> kernelsEncoded{0};
  std::atomic<uint64_t> kernelsExecuted{0};
  std::atomic<uint64_t> kernelsFailed{0};
  std::atomic<uint64_t> kernelsSkipped{0};
  std::atomic<uint64_t> segmentsCommitted{0};
  std::atomic<uint64_t> segmentsCompleted{0};
  std::atomic<uint64_t> handlersRun{0};
  std::atomic<uint64_t> eventSignals{0};
  std::atomic<uint64_t> eventWaits{0};
  std::atomic<uint64_t> violations{0};
  std::atomic<uint64_t> executingQueues{0}; // GPU threads running a segment right now
  std::atomic<uint64_t> maxConcurrentQueues{0};
  std::atomic<uint64_t> raceMeetings{0};
  std::atomic<uint64_t> raceMeetingTimeouts{0};
};

inline void bump(std::atomic<uint64_t>& counter) noexcept {
  counter.fetch_add(1, std::memory_order_relaxed);
}

struct SimDevice::State {
  explicit State(const Config& config);
  ~State();
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Reports per policy: aborts with the message, throws MetalViolation, or records it.
  void violation(ViolationKind kind, const std::string& message);
  // The race-window knob: lingers at `point` if a window is set (yields at least once).
  void linger(RacePoint point) const;
  // Note [Race meetings]: waits at `point` until `contended()` or the meeting's timeout;
  // returns at once when no meeting is set there.
  void awaitContender(RacePoint point, FunctionRef<bool()> contended);

  // A GPU thread starts / stops executing a segment (maxConcurrentQueues).
  void enterExecution() noexcept;
  void leaveExecution() noexcept;

  std::vector<std::string> violationMessages() const;
  void clearViolations();

  void registerQueue(const std::shared_ptr<GpuQueue>& queue);
  std::vector<std::shared_ptr<GpuQueue>> liveQueues();

  std::atomic<ViolationPolicy> policy;
  std::array<std::atomic<uint32_t>, kRacePointCount> raceWindowUs;
  std::array<std::atomic<uint32_t>, kRacePointCount> raceMeetingUs;
  SimCounters counters;
  Quarantine quarantine;
  // Runs the handlers added after a commit (FinalCompletion::addLate); a queue's own
  // handlers run on its handler thread (Note [A handler thread per queue] in gpu_queue.h).
  JobThread handlerThread;

 private:
  static constexpr size_t kMaxMessages = 1000;
  mutable std::mutex messagesMutex_;
  std::deque<std::string> messages_; // the last kMaxMessages, oldest first

  std::mutex queuesMutex_;
  std::vector<std::weak_ptr<GpuQueue>> queues_;
};

} // namespace at::mps::threadsafe::sim
