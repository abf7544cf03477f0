#include "serial_executor.h"

#include <algorithm>
#include <chrono>

#include "../errors.h"
#include "thread_token.h"

namespace at::mps::threadsafe::sim {

void SimSerialExecutor::refuseReentry() const {
  if (isCurrent()) {
    throw ReentryError("dispatch_sync onto queue '" + label_ + "' from inside it would deadlock");
  }
}

void SimSerialExecutor::runLocked(FunctionRef<void()> fn) {
  owner_.store(threadToken(), std::memory_order_relaxed);
  struct Leave {
    SimSerialExecutor& executor;
    ~Leave() {
      executor.owner_.store(0, std::memory_order_relaxed);
      executor.mutex_.unlock();
    }
  } leave{*this};
  fn();
}

uint64_t SimSerialExecutor::dispatchSync(FunctionRef<void()> fn) {
  refuseReentry();
  uint64_t waitedNs = 0;
  if (!mutex_.try_lock()) {
    // Only a contended entry pays for the clock.
    const auto start = std::chrono::steady_clock::now();
    mutex_.lock();
    const auto waited = std::chrono::steady_clock::now() - start;
    // At least 1: callers tell a contended entry by a non-zero wait.
    waitedNs = std::max<uint64_t>(
        1, static_cast<uint64_t>(
               std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count()));
  }
  runLocked(fn);
  return waitedNs;
}

bool SimSerialExecutor::tryDispatchSync(FunctionRef<void()> fn) {
  refuseReentry(); // try_lock on a mutex this thread holds would be undefined
  if (!mutex_.try_lock()) {
    return false;
  }
  runLocked(fn);
  return true;
}

bool SimSerialExecutor::isCurrent() const {
  return owner_.load(std::memory_order_relaxed) == threadToken();
}

} // namespace at::mps::threadsafe::sim
