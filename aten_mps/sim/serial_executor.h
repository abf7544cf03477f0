#pragma once

// The sim's serial queue (backend.h SerialExecutor): dispatch_sync semantics over a mutex.
// The function runs on the caller's thread; the executor records which thread is inside so
// a dispatch from inside itself raises ReentryError instead of deadlocking.

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "../backend.h"

namespace at::mps::threadsafe::sim {

class SimSerialExecutor final : public SerialExecutor {
 public:
  explicit SimSerialExecutor(std::string label) : label_(std::move(label)) {}

  uint64_t dispatchSync(FunctionRef<void()> fn) override;
  bool tryDispatchSync(FunctionRef<void()> fn) override;
  bool isCurrent() const override;
  void* native() override {
    return this;
  }
  const std::string& label() const {
    return label_;
  }

 private:
  void refuseReentry() const;
  // Runs fn with the executor already locked by this thread; unlocks, even when fn throws.
  void runLocked(FunctionRef<void()> fn);

  const std::string label_;
  std::mutex mutex_;
  // threadToken() of the thread inside, 0 when none. Only that thread can make it equal to
  // its own token, so isCurrent() needs no ordering.
  std::atomic<uint64_t> owner_{0};
};

} // namespace at::mps::threadsafe::sim
