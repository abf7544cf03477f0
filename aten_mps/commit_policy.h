#pragma once

// When a stream's commits keep its command buffer open, and when COMMIT_ADAPTIVE commits:
// upstream's _enableCommitAndContinue and the allocator's low-watermark test. The runtime owns
// one and hands it to its streams (stream_context.h).

#include <functional>
#include <mutex>
#include <utility>

namespace at::mps::threadsafe {

class CommitPolicy {
 public:
  explicit CommitPolicy(bool commitAndContinue) : commitAndContinue_(commitAndContinue) {}
  CommitPolicy(const CommitPolicy&) = delete;
  CommitPolicy& operator=(const CommitPolicy&) = delete;

  // SyncType::COMMIT keeps the MPSCommandBuffer open (commitAndContinue).
  bool commitAndContinue() const {
    return commitAndContinue_;
  }
  // COMMIT_ADAPTIVE commits when `probe` returns true (nullptr: never).
  void setMemoryPressureProbe(std::function<bool()> probe) {
    std::lock_guard<std::mutex> lock(probeMutex_);
    memoryPressureProbe_ = std::move(probe);
  }
  bool underMemoryPressure() const {
    std::lock_guard<std::mutex> lock(probeMutex_);
    return memoryPressureProbe_ && memoryPressureProbe_();
  }

 private:
  const bool commitAndContinue_;
  mutable std::mutex probeMutex_;
  std::function<bool()> memoryPressureProbe_;
};

} // namespace at::mps::threadsafe
