#include "diagnostics.h"

#include "backend.h"

namespace at::mps::threadsafe {

const char* toString(SyncType type) {
  switch (type) {
    case SyncType::NONE:
      return "NONE";
    case SyncType::COMMIT:
      return "COMMIT";
    case SyncType::COMMIT_AND_WAIT:
      return "COMMIT_AND_WAIT";
    case SyncType::COMMIT_AND_CONTINUE:
      return "COMMIT_AND_CONTINUE";
    case SyncType::COMMIT_ADAPTIVE:
      return "COMMIT_ADAPTIVE";
  }
  return "?";
}

const char* toString(CommandBufferStatus status) {
  switch (status) {
    case CommandBufferStatus::NotEnqueued:
      return "NotEnqueued";
    case CommandBufferStatus::Committed:
      return "Committed";
    case CommandBufferStatus::Completed:
      return "Completed";
    case CommandBufferStatus::Error:
      return "Error";
  }
  return "?";
}

void raiseToAtLeast(std::atomic<uint64_t>& value, uint64_t candidate) noexcept {
  uint64_t current = value.load(std::memory_order_relaxed);
  while (current < candidate &&
         !value.compare_exchange_weak(current, candidate, std::memory_order_acq_rel,
                                      std::memory_order_relaxed)) {
  }
}

} // namespace at::mps::threadsafe
