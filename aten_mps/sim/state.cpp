#include "state.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "gpu_queue.h"

namespace at::mps::threadsafe::sim {

SimDevice::State::State(const Config& config)
    : policy(config.policy), quarantine(config.quarantine) {
  for (size_t i = 0; i < kRacePointCount; ++i) {
    raceWindowUs[i].store(config.raceWindowUs[i], std::memory_order_relaxed);
    raceMeetingUs[i].store(config.raceMeetingUs[i], std::memory_order_relaxed);
  }
}

SimDevice::State::~State() {
  // Runs when the last object of the device goes, possibly on the handler thread itself
  // (a handler held the last reference): JobThread::stop() copes with that.
  handlerThread.stop();
  quarantine.close();
}

void SimDevice::State::violation(ViolationKind kind, const std::string& message) {
  bump(counters.violations);
  const ViolationPolicy now = policy.load(std::memory_order_relaxed);
  if (now == ViolationPolicy::Abort) {
    // As Metal does: the message on stderr, then the process dies.
    std::fprintf(stderr, "%s\n", message.c_str());
    std::fflush(stderr);
    std::abort();
  }
  {
    std::lock_guard<std::mutex> lock(messagesMutex_);
    messages_.push_back(message);
    if (messages_.size() > kMaxMessages) {
      messages_.pop_front();
    }
  }
  if (now == ViolationPolicy::Throw) {
    throw MetalViolation(kind, message);
  }
}

void SimDevice::State::linger(RacePoint point) const {
  const uint32_t us = raceWindowUs[static_cast<size_t>(point)].load(std::memory_order_relaxed);
  if (us == 0) {
    return;
  }
  std::this_thread::yield();
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

void SimDevice::State::awaitContender(RacePoint point, FunctionRef<bool()> contended) {
  const uint32_t us = raceMeetingUs[static_cast<size_t>(point)].load(std::memory_order_relaxed);
  if (us == 0) {
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (!contended()) {
    if (raceMeetingUs[static_cast<size_t>(point)].load(std::memory_order_relaxed) == 0) {
      return; // switched off: releases the threads waiting in a meeting
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      bump(counters.raceMeetingTimeouts);
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  bump(counters.raceMeetings);
}

void SimDevice::State::enterExecution() noexcept {
  const uint64_t now = counters.executingQueues.fetch_add(1, std::memory_order_relaxed) + 1;
  uint64_t seen = counters.maxConcurrentQueues.load(std::memory_order_relaxed);
  while (seen < now &&
         !counters.maxConcurrentQueues.compare_exchange_weak(seen, now, std::memory_order_relaxed)) {
  }
}

void SimDevice::State::leaveExecution() noexcept {
  counters.executingQueues.fetch_sub(1, std::memory_order_relaxed);
}

std::vector<std::string> SimDevice::State::violationMessages() const {
  std::lock_guard<std::mutex> lock(messagesMutex_);
  return {messages_.begin(), messages_.end()};
}

void SimDevice::State::clearViolations() {
  std::lock_guard<std::mutex> lock(messagesMutex_);
  messages_.clear();
  counters.violations.store(0, std::memory_order_relaxed);
}

void SimDevice::State::registerQueue(const std::shared_ptr<GpuQueue>& queue) {
  std::lock_guard<std::mutex> lock(queuesMutex_);
  std::erase_if(queues_, [](const std::weak_ptr<GpuQueue>& q) { return q.expired(); });
  queues_.push_back(queue);
}

std::vector<std::shared_ptr<GpuQueue>> SimDevice::State::liveQueues() {
  std::lock_guard<std::mutex> lock(queuesMutex_);
  std::vector<std::shared_ptr<GpuQueue>> live;
  for (const auto& weak : queues_) {
    if (auto queue = weak.lock()) {
      live.push_back(std::move(queue));
    }
  }
  return live;
}

} // namespace at::mps::threadsafe::sim
