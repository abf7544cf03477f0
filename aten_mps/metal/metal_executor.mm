// SerialExecutor over a GCD serial queue: the queue upstream's
// dispatch_sync_with_rethrow(stream->queue(), ...) callers enter.

#include "metal_objects.h"

#include <algorithm>
#include <chrono>
#include <exception>

#include "../errors.h"

namespace at::mps::threadsafe::metal {

namespace {

// dispatch_queue_set_specific key: the queue's context value is its executor, so
// dispatch_get_specific tells which executor's queue the calling code runs on, including code
// that entered the queue with a plain dispatch_sync on native().
char kExecutorKey;

// Executors this thread is inside, innermost first. dispatch_get_specific only sees the
// innermost queue; a thread that commits another stream's batch from inside its own queue
// (tryDispatchSync, stream.h) is inside both. Frames live on the stack: no allocation, and
// nothing to destroy at thread exit.
struct InsideFrame {
  const MetalSerialExecutor* executor;
  InsideFrame* outer;
};
thread_local InsideFrame* tlsInside = nullptr;

class InsideScope {
 public:
  explicit InsideScope(const MetalSerialExecutor* executor) : frame_{executor, tlsInside} {
    tlsInside = &frame_;
  }
  ~InsideScope() {
    tlsInside = frame_.outer;
  }
  InsideScope(const InsideScope&) = delete;
  InsideScope& operator=(const InsideScope&) = delete;

 private:
  InsideFrame frame_;
};

} // namespace

MetalSerialExecutor::MetalSerialExecutor(const std::string& label)
    : label_(label), queue_(dispatch_queue_create(label.c_str(), DISPATCH_QUEUE_SERIAL)) {
  if (queue_ == nullptr) {
    throw Error("dispatch_queue_create failed for '" + label + "'");
  }
  dispatch_queue_set_specific(queue_, &kExecutorKey, this, nullptr);
}

MetalSerialExecutor::~MetalSerialExecutor() {
  dispatch_queue_set_specific(queue_, &kExecutorKey, nullptr, nullptr);
  dispatch_release(queue_);
}

bool MetalSerialExecutor::isCurrent() const {
  for (const InsideFrame* frame = tlsInside; frame != nullptr; frame = frame->outer) {
    if (frame->executor == this) {
      return true;
    }
  }
  return dispatch_get_specific(&kExecutorKey) == this;
}

void MetalSerialExecutor::refuseReentry(const char* what) const {
  if (isCurrent()) {
    throw ReentryError(std::string(what) + " onto '" + label_ +
                       "' from inside it would deadlock (GCD serial queue)");
  }
}

// Runs fn inside the queue on the calling thread (dispatch_sync runs the block on the
// caller). A C++ exception must not unwind through libdispatch's frames, so it is caught in
// the block and rethrown here, as upstream's dispatch_sync_with_rethrow does.
void MetalSerialExecutor::runOnQueue(FunctionRef<void()> fn) {
  __block std::exception_ptr failure;
  const MetalSerialExecutor* self = this;
  dispatch_sync(queue_, ^() {
    InsideScope inside(self);
    @autoreleasepool {
      try {
        fn();
      } catch (...) {
        failure = std::current_exception();
      }
    }
  });
  if (failure) {
    std::rethrow_exception(failure);
  }
}

uint64_t MetalSerialExecutor::dispatchSync(FunctionRef<void()> fn) {
  refuseReentry("dispatchSync");
  uint64_t waitedNs = 0;
  std::unique_lock<std::mutex> gate(gate_, std::try_to_lock);
  if (!gate.owns_lock()) {
    const auto start = std::chrono::steady_clock::now();
    gate.lock();
    const auto waited = std::chrono::steady_clock::now() - start;
    // At least 1: a contended entry must count as a wait even on a coarse clock.
    waitedNs = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(waited).count()));
  }
  runOnQueue(fn);
  return waitedNs;
}

bool MetalSerialExecutor::tryDispatchSync(FunctionRef<void()> fn) {
  refuseReentry("tryDispatchSync");
  std::unique_lock<std::mutex> gate(gate_, std::try_to_lock);
  if (!gate.owns_lock()) {
    return false;
  }
  runOnQueue(fn);
  return true;
}

} // namespace at::mps::threadsafe::metal
