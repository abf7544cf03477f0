#pragma once

// Shared helpers of the runtime tests: a runtime over a sim device the test can still reach,
// kernel encoding in one call, threads joined under a deadline (a deadlock must fail loudly,
// not hang the suite), waiting for an eventual condition, the stress size knob, and running
// this test binary as a child process (for exit and crash behaviour).
//
// Catch2 v2 assertions are not thread-safe: worker threads never use them. They record what
// they saw (counters, captured exceptions) and the test thread checks it after joining.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "catch2_compat.h"

#include "aten_mps/errors.h"
#include "aten_mps/events.h"
#include "aten_mps/runtime.h"
#include "aten_mps/sim/sim_device.h"

namespace mpsts_test {

using namespace at::mps::threadsafe; // NOLINT(google-build-using-namespace): test code
namespace sim = at::mps::threadsafe::sim;
using namespace std::chrono_literals;

// ---- Build flavour and sizes ---------------------------------------------------------------

#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MPSTS_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define MPSTS_SANITIZED 1
#endif
#endif
#ifndef MPSTS_SANITIZED
#define MPSTS_SANITIZED 0
#endif

// Multiplier for stress sizes: env MPSTS_STRESS_SCALE, else 1 (0.1 in sanitizer builds, which
// run ~10x slower and must stay within a few minutes in total).
double stressScale();
// Scales a count by stressScale(), never below `minimum`.
int scaled(int count, int minimum = 1);
// Multiplier for deadlines (sanitizer builds are slower).
double slowdown();

// ---- A runtime over a sim device -------------------------------------------------------------

// A sim config whose violations throw MetalViolation from the offending call.
sim::Config throwingConfig();

struct SimRuntime {
  explicit SimRuntime(RuntimeOptions options = {}, sim::Config config = throwingConfig());
  Runtime& rt() {
    return *runtime;
  }
  sim::SimDevice& device() {
    return *sim;
  }
  sim::SimDevice* sim; // owned by the runtime
  std::unique_ptr<Runtime> runtime;
};

// Encodes one kernel through a lease of `stream`'s coalescing encoder. On the queue only.
void encodeKernel(Stream& stream, std::function<void()> kernel);
// Enters `stream`'s queue, encodes one kernel, then synchronizes with `sync`.
void runKernel(Stream& stream, std::function<void()> kernel, SyncType sync);

// ---- Threads ---------------------------------------------------------------------------------

// Threads whose exceptions are captured for the test thread, joined under a deadline: past it
// the process exits with a message (a hung thread cannot be joined, so nothing else is safe).
class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup();
  void spawn(std::function<void()> fn);
  // Joins every thread; exits the process if they are not done within `limit` (scaled by
  // slowdown()). Returns the captured exceptions' messages.
  std::vector<std::string> join(std::chrono::milliseconds limit = 20000ms,
                                const char* what = "threads");
  // join(), then rethrows the first captured exception.
  void joinAndRethrow(std::chrono::milliseconds limit = 20000ms, const char* what = "threads");

 private:
  struct Shared;
  std::shared_ptr<Shared> shared_ = makeShared();
  std::vector<std::thread> threads_;
  static std::shared_ptr<Shared> makeShared();
};

// Polls `condition` until it holds or `limit` (scaled by slowdown()) passes; returns it.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit = 10000ms);

// Spins for about `us` microseconds: a kernel's "GPU time", without sleeping the thread.
void spinFor(std::chrono::microseconds us);

// A gate kernels can block on, so a test holds the GPU (or a thread) exactly as long as it
// needs. The owner opens it when destroyed, so a failing test never leaves a queue blocked;
// waiters share its state and may outlive it.
class Gate {
 public:
  Gate();
  ~Gate();
  Gate(const Gate&) = delete;
  Gate& operator=(const Gate&) = delete;
  void open();
  bool isOpen() const;
  void wait() const;
  // A callable that blocks until the gate opens (for kernels run after the owner is gone).
  std::function<void()> waiter() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Matches a MetalViolation of one kind (REQUIRE_THROWS_MATCHES(expr, MetalViolation, ...)).
class IsViolation : public Catch::MatcherBase<sim::MetalViolation> {
 public:
  explicit IsViolation(sim::ViolationKind kind) : kind_(kind) {}
  bool match(const sim::MetalViolation& violation) const override {
    return violation.kind() == kind_;
  }
  std::string describe() const override {
    return std::string("is a MetalViolation of kind ") + sim::toString(kind_);
  }

 private:
  sim::ViolationKind kind_;
};

#define REQUIRE_VIOLATION(expr, kind) \
  REQUIRE_THROWS_MATCHES(expr, ::mpsts_test::sim::MetalViolation, ::mpsts_test::IsViolation(kind))

// ---- Child processes -------------------------------------------------------------------------

struct ChildResult {
  bool exited = false; // exited normally (else: killed by a signal or timed out)
  int exitCode = -1;
  int signal = 0;
  bool timedOut = false;
  std::string output; // stdout + stderr
};

// Runs this test binary with only the (hidden) test `testName`, extra environment `env`
// ("NAME=value"), killing it after `limit` (scaled by slowdown()).
ChildResult runSelf(const std::string& testName, const std::vector<std::string>& env,
                    std::chrono::milliseconds limit);
std::string describe(const ChildResult& result);

} // namespace mpsts_test
