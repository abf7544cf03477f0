#pragma once

// Test hooks: named points in the runtime where a test can run code on the thread that reaches
// them, to make one interleaving of two threads certain (a latch: "stop here until the other
// thread has done X") instead of likely.
//
// Note [Test hooks]
// A hook is one relaxed load of a pointer and a predictable branch when no test has set one,
// which is always the case in production. Tests set a hook for the duration of one scenario
// (TestHookScope) and must not leave it set while threads they do not control run. A hook
// function runs on the thread that reached the point, in whatever state the point documents
// (inside a queue, holding nothing, ...); it may block on a latch, and must not re-enter the
// runtime in a way the point forbids. This is the deterministic sibling of the seeded
// schedule mode's race points, which perturb timing but cannot force an order.

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>

namespace at::mps::threadsafe {

class Stream;

enum class TestHook : uint8_t {
  // useBuffers: after the dependencies were read and this stream's uses recorded as pending,
  // before the waits (inside the stream's queue, no lock held).
  BufferUsesBeforeWaits,
  // commitBatch: after the command buffer was committed, before the new batch state is
  // published (inside the stream's queue).
  CommitBeforePublish,
  // currentStream / the thread policy: after the policy was read, before the stream is
  // chosen (no lock of the runtime held).
  PolicyRead,
  // A thread's bound stream about to be given back by its thread-exit bookkeeping (the
  // thread is exiting; no lock held).
  ThreadUnbind,
  // The completion handler of a batch, before it records the batch's status.
  BatchCompleted,
  kCount,
};

using TestHookFn = std::function<void(TestHook, Stream*)>;

namespace test_hooks {
extern std::atomic<const TestHookFn*> gHook;
// Calls of the hook in progress: a completion handler on a sim thread may still be inside the
// hook when the test's TestHookScope ends, and must not run a destroyed std::function.
extern std::atomic<int> gCallsInFlight;
} // namespace test_hooks

inline void testHook(TestHook point, Stream* stream = nullptr) {
  if (test_hooks::gHook.load(std::memory_order_relaxed) == nullptr) [[likely]] {
    return; // off: one relaxed load
  }
  test_hooks::gCallsInFlight.fetch_add(1); // seq_cst: ordered against ~TestHookScope's store
  if (const TestHookFn* hook = test_hooks::gHook.load()) {
    (*hook)(point, stream);
  }
  test_hooks::gCallsInFlight.fetch_sub(1);
}

// Sets `fn` as the hook for the scope; restores none after.
class TestHookScope {
 public:
  explicit TestHookScope(TestHookFn fn) : fn_(std::move(fn)) {
    test_hooks::gHook.store(&fn_, std::memory_order_release);
  }
  ~TestHookScope() {
    test_hooks::gHook.store(nullptr); // seq_cst: a call that missed it is counted in flight
    while (test_hooks::gCallsInFlight.load() != 0) {
      std::this_thread::yield();
    }
  }
  TestHookScope(const TestHookScope&) = delete;
  TestHookScope& operator=(const TestHookScope&) = delete;

 private:
  TestHookFn fn_;
};

} // namespace at::mps::threadsafe
