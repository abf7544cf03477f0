#pragma once

// The execution side of a command queue: committed segments, run in commit order on the
// queue's own GPU thread; their completion handlers run, in the same order, on the queue's
// own handler thread (Note [A handler thread per queue]).
//
// Note [A handler thread per queue]
// Metal runs completion handlers on threads of its own, with no order between command
// queues. One handler thread for the whole device serialized every queue's completions: at
// 16 streams the microbenchmark's 153k ops/s (docs/benchmarks.md) were 153k handler batches
// a second through that one thread, each ending in a waiter's wake-up. Each queue now has its
// own, so queues complete independently, and within a queue handlers keep commit order. Handlers added after a
// commit (FinalCompletion::addLate, ViolationPolicy::Count only) still go to the device's.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../backend.h"
#include "job_thread.h"
#include "shared_event.h"
#include "state.h"

namespace at::mps::threadsafe::sim {

struct Command {
  enum class Kind : uint8_t { Kernel, SignalEvent, WaitForEvent };
  Kind kind = Kind::Kernel;
  uint64_t value = 0; // the event value signalled or waited for
  std::function<void()> kernel;
  std::shared_ptr<SimSharedEvent> event;
};

// What a command buffer's commit() shares with the segment it closes: the buffer's status
// and, under ViolationPolicy::Count only, handlers added after the commit (they still run, so
// a program carrying on past the violation does not hang waiting for them).
class FinalCompletion {
 public:
  CommandBufferStatus status() const {
    return status_.load(std::memory_order_acquire);
  }
  void setStatus(CommandBufferStatus status) {
    status_.store(status, std::memory_order_release);
  }
  // A handler added after commit: kept for finish(), or run now if the buffer is done.
  void addLate(SimDevice::State& state, std::shared_ptr<SimDevice::State> owner,
               CompletionHandler handler);
  // On the handler thread, after the segment's own handlers: runs the late ones.
  void finish(SimDevice::State& state, CommandBufferStatus status, const std::string& error);

 private:
  std::atomic<CommandBufferStatus> status_{CommandBufferStatus::Committed};
  std::mutex mutex_;
  bool finished_ = false;
  CommandBufferStatus finalStatus_ = CommandBufferStatus::Committed;
  std::string error_;
  std::vector<CompletionHandler> late_;
};

// One underlying command buffer's worth of work: what a command buffer held when commit or
// commitAndContinue was called.
struct Segment {
  std::vector<Command> commands;
  std::vector<CompletionHandler> handlers;
  std::shared_ptr<FinalCompletion> final; // set for the segment commit() closes
};

class GpuQueue {
 public:
  GpuQueue(std::shared_ptr<SimDevice::State> state, std::string label);
  ~GpuQueue(); // runs what is committed, then joins the GPU thread
  GpuQueue(const GpuQueue&) = delete;
  GpuQueue& operator=(const GpuQueue&) = delete;

  const std::string& label() const {
    return label_;
  }
  // Queues the segment behind those committed before it; starts the GPU thread if needed.
  // One wake-up per segment, whatever its size.
  void submit(Segment segment);
  // Runs what is committed, then ends the GPU thread (a later submit starts a new one).
  void drainAndStop();

 private:
  static void execute(const std::shared_ptr<SimDevice::State>& state,
                      const std::shared_ptr<JobThread>& handlers, Segment& segment);

  std::shared_ptr<SimDevice::State> state_;
  const std::string label_;
  JobThread gpuThread_;
  // Shared with the GPU thread's jobs: a kernel may drop the last reference to this queue
  // while its segment is still executing (Note [Job thread lifetime]).
  std::shared_ptr<JobThread> handlerThread_ = std::make_shared<JobThread>();
};

} // namespace at::mps::threadsafe::sim
