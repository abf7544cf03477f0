#pragma once

// Cross-stream events, as torch.cuda.Event: record() captures "all work the stream has done
// so far", wait() makes another stream's GPU wait for it, query()/synchronize() look at it
// from the CPU. An event is a (stream, batch) pair on that stream's timeline (Note [Batches
// and the timeline]); recording commits the stream's open batch, because a batch that is not
// committed never completes and a GPU wait on it could hang.

#include <cstdint>
#include <mutex>

#include "stream.h"

namespace at::mps::threadsafe {

class Event {
 public:
  Event() = default;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // Enters `stream`'s queue (or runs inline when already on it).
  void record(Stream& stream);
  // Makes `waiter` wait on the GPU for the recorded work; no-op if never recorded.
  void wait(Stream& waiter);
  // True once the recorded work has completed (or if nothing was recorded).
  bool query() const;
  // Blocks until the recorded work has completed; raises its GPU error, if any.
  void synchronize() const;
  bool isRecorded() const;
  Stream* stream() const;

 private:
  mutable std::mutex mutex_;
  Stream* stream_ = nullptr;
  uint64_t batch_ = 0;
};

// Runs fn on `stream`'s queue: inline when the caller is already on it, else via dispatch().
void runOnQueue(Stream& stream, FunctionRef<void()> fn);

// `waiter` waits on the GPU for every batch `producer` has encoded so far.
void waitStream(Stream& waiter, Stream& producer);

} // namespace at::mps::threadsafe
