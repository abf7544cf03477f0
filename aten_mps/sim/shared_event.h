#pragma once

// MTLSharedEvent: a 64-bit timeline that GPU threads signal and CPU or GPU threads wait on.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "../backend.h"

namespace at::mps::threadsafe::sim {

class SimSharedEvent final : public SharedEvent,
                             public std::enable_shared_from_this<SimSharedEvent> {
 public:
  uint64_t signaledValue() const override {
    return value_.load(std::memory_order_acquire);
  }
  void waitUntilSignaled(uint64_t value) override;
  void* native() override {
    return this;
  }
  // Raises the value to at least `value` (values only grow) and wakes the waiters.
  void signal(uint64_t value);

 private:
  std::atomic<uint64_t> value_{0};
  std::mutex mutex_; // pairs with changed_ so a signal between check and sleep is not lost
  std::condition_variable changed_;
};

// The sim event behind a SharedEvent, retained the way a command buffer retains the events
// it encodes. InvalidArgument for an event that SimDevice::makeSharedEvent did not make.
std::shared_ptr<SimSharedEvent> retainSimEvent(SharedEvent& event);

} // namespace at::mps::threadsafe::sim
