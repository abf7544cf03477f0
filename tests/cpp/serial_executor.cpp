// The serial executor's dispatch_sync_with_rethrow semantics (backend.h, SerialExecutor):
// caller's thread, mutual exclusion, exceptions rethrown, re-entry refused, try never blocks.

#include <barrier>

#include "test_support.h"

namespace mpsts_test {
namespace {

struct Executor {
  sim::SimDevice device{throwingConfig()};
  std::unique_ptr<SerialExecutor> executor = device.makeSerialExecutor("test executor");
};

struct CustomFault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

} // namespace

TEST_CASE("serial executor: runs the function on the calling thread", "[executor]") {
  Executor e;
  std::thread::id ranOn;
  bool currentInside = false;
  uint64_t waitedNs = e.executor->dispatchSync([&] {
    ranOn = std::this_thread::get_id();
    currentInside = e.executor->isCurrent();
  });
  REQUIRE(ranOn == std::this_thread::get_id());
  REQUIRE(currentInside);
  REQUIRE_FALSE(e.executor->isCurrent());
  REQUIRE(waitedNs == 0); // uncontended
}

TEST_CASE("serial executor: functions never run at the same time", "[executor]") {
  Executor e;
  const int threads = 8;
  const int perThread = scaled(300, 30);
  std::atomic<int> inside{0};
  std::atomic<int> maxInside{0};
  long long unguarded = 0; // only ever touched inside the executor
  std::atomic<uint64_t> waitedNs{0};
  ThreadGroup group;
  std::barrier start(threads);
  for (int t = 0; t < threads; ++t) {
    group.spawn([&] {
      start.arrive_and_wait();
      for (int i = 0; i < perThread; ++i) {
        waitedNs += e.executor->dispatchSync([&] {
          int now = ++inside;
          int seen = maxInside.load();
          while (now > seen && !maxInside.compare_exchange_weak(seen, now)) {
          }
          long long before = unguarded;
          std::this_thread::yield(); // widens the window for a second thread to get in
          unguarded = before + 1;
          --inside;
        });
      }
    });
  }
  group.joinAndRethrow();
  REQUIRE(maxInside == 1);
  REQUIRE(unguarded == static_cast<long long>(threads) * perThread);
  REQUIRE(waitedNs > 0); // the threads did contend, and the wait was measured
}

TEST_CASE("serial executor: an exception thrown inside is rethrown to the caller",
          "[executor]") {
  Executor e;
  REQUIRE_THROWS_AS(e.executor->dispatchSync([] { throw CustomFault("inside"); }), CustomFault);
  REQUIRE_THROWS_WITH(e.executor->dispatchSync([] { throw CustomFault("message kept"); }),
                      "message kept");
  // The executor is free again afterwards.
  REQUIRE_FALSE(e.executor->isCurrent());
  bool ran = false;
  REQUIRE(e.executor->tryDispatchSync([&] { ran = true; }));
  REQUIRE(ran);
}

TEST_CASE("serial executor: re-entry from inside raises ReentryError instead of deadlocking",
          "[executor]") {
  Executor e;
  bool innerRan = false;
  bool refused = false;
  bool outerContinued = false;
  ThreadGroup group; // on a thread of its own so a deadlock fails the test instead of hanging
  group.spawn([&] {
    e.executor->dispatchSync([&] {
      try {
        e.executor->dispatchSync([&] { innerRan = true; });
      } catch (const ReentryError&) {
        refused = true;
      }
      outerContinued = true;
    });
  });
  group.joinAndRethrow(10000ms, "re-entering thread");
  REQUIRE(refused);
  REQUIRE_FALSE(innerRan);
  REQUIRE(outerContinued);
  // And it propagates as a ReentryError (a ContractError) when not caught inside.
  REQUIRE_THROWS_AS(e.executor->dispatchSync([&] { e.executor->dispatchSync([] {}); }),
                    ReentryError);
}

TEST_CASE("serial executor: tryDispatchSync never blocks", "[executor]") {
  Executor e;
  Gate release;
  std::atomic<bool> holding{false};
  ThreadGroup group;
  group.spawn([&] {
    e.executor->dispatchSync([&] {
      holding = true;
      release.wait();
    });
  });
  REQUIRE(eventually([&] { return holding.load(); }));

  bool ran = false;
  auto start = std::chrono::steady_clock::now();
  REQUIRE_FALSE(e.executor->tryDispatchSync([&] { ran = true; }));
  REQUIRE(std::chrono::steady_clock::now() - start < 1s);
  REQUIRE_FALSE(ran);

  release.open();
  group.joinAndRethrow();
  REQUIRE(e.executor->tryDispatchSync([&] { ran = true; }));
  REQUIRE(ran);
}

} // namespace mpsts_test
