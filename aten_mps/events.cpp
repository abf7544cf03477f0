#include "events.h"

#include "schedule.h"

namespace at::mps::threadsafe {

void runOnQueue(Stream& stream, FunctionRef<void()> fn) {
  if (stream.isCurrent()) {
    fn();
  } else {
    stream.dispatch(fn);
  }
}

void Event::record(Stream& stream) {
  uint64_t batch = 0;
  runOnQueue(stream, [&] {
    stream.synchronize(SyncType::COMMIT);
    batch = stream.submittedBatch();
  });
  racePoint(SchedulePoint::EventRecord);
  std::lock_guard<std::mutex> lock(mutex_);
  stream_ = &stream;
  batch_ = batch;
}

void Event::wait(Stream& waiter) {
  Stream* stream = nullptr;
  uint64_t batch = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stream = stream_;
    batch = batch_;
  }
  racePoint(SchedulePoint::EventWait);
  if (stream == nullptr) {
    return;
  }
  runOnQueue(waiter, [&] { waiter.waitForStream(*stream, batch); });
}

bool Event::query() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stream_ == nullptr || stream_->completedBatch() >= batch_;
}

void Event::synchronize() const {
  Stream* stream = nullptr;
  uint64_t batch = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stream = stream_;
    batch = batch_;
  }
  racePoint(SchedulePoint::EventWait);
  if (stream == nullptr) {
    return;
  }
  stream->raiseIfFailed(batch, FailureScope::Event); // waits for it (Note [GPU errors belong to batches])
}

bool Event::isRecorded() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stream_ != nullptr;
}

Stream* Event::stream() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stream_;
}

void waitStream(Stream& waiter, Stream& producer) {
  // waitStream(s, s) too: stream order needs no wait, but a failed batch of the stream is a
  // dependency of what follows (Note [GPU errors belong to batches], F5).
  runOnQueue(waiter, [&] {
    // Work the producer has encoded but not committed counts too (as in CUDA, where every
    // launched kernel is enqueued); waitForStream gets that batch closed first.
    const uint64_t batch = producer.batchOfLatestWork();
    racePoint(SchedulePoint::WaitStreamRead);
    waiter.waitForStream(producer, batch);
  });
}

} // namespace at::mps::threadsafe
