#include "shared_event.h"

#include "../errors.h"

namespace at::mps::threadsafe::sim {

void SimSharedEvent::waitUntilSignaled(uint64_t value) {
  if (value_.load(std::memory_order_acquire) >= value) {
    return;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return value_.load(std::memory_order_acquire) >= value; });
}

void SimSharedEvent::signal(uint64_t value) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (value > value_.load(std::memory_order_relaxed)) {
      value_.store(value, std::memory_order_release);
    }
  }
  changed_.notify_all();
}

std::shared_ptr<SimSharedEvent> retainSimEvent(SharedEvent& event) {
  auto* sim = dynamic_cast<SimSharedEvent*>(&event);
  if (sim == nullptr) {
    throw InvalidArgument("sim command buffer: the event was not made by a SimDevice");
  }
  std::shared_ptr<SimSharedEvent> retained = sim->weak_from_this().lock();
  if (!retained) {
    throw InvalidArgument(
        "sim command buffer: the event is not owned by a shared_ptr from makeSharedEvent()");
  }
  return retained;
}

} // namespace at::mps::threadsafe::sim
