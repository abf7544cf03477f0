// The Catch2 runner of runtime_tests (every other file in tests/cpp/ is one rule group), and
// a watchdog: a test still running after MPSTS_TEST_TIMEOUT_S seconds (default 120, 600 in
// sanitizer builds) is reported by name and the process exits, so a deadlock fails the run
// instead of hanging it.
//
// The runner is our own main() (Catch::Session), the same for Catch2 v2 and v3: v2 needs
// CATCH_CONFIG_RUNNER in this one file; v3 links Catch2::Catch2 without Catch2WithMain.
#define CATCH_CONFIG_RUNNER
#include "catch2_compat.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "test_support.h"

namespace {

struct WatchdogState {
  std::mutex mutex;
  std::condition_variable changed;
  std::string test; // empty: between tests
  unsigned long long generation = 0;
};

// Leaked on purpose: its thread is detached and may still wait when the process exits.
WatchdogState& watchdog() {
  static WatchdogState* state = [] {
    auto* created = new WatchdogState;
    std::thread([created] {
      long limit = MPSTS_SANITIZED ? 600 : 120;
      if (const char* text = std::getenv("MPSTS_TEST_TIMEOUT_S")) {
        limit = std::atol(text) > 0 ? std::atol(text) : limit;
      }
      std::unique_lock<std::mutex> lock(created->mutex);
      for (;;) {
        created->changed.wait(lock, [&] { return !created->test.empty(); });
        unsigned long long generation = created->generation;
        if (!created->changed.wait_for(lock, std::chrono::seconds(limit),
                                       [&] { return created->generation != generation; })) {
          std::fprintf(stderr, "FATAL: test \"%s\" still running after %ld s: deadlock or hang.\n",
                       created->test.c_str(), limit);
          std::fflush(stderr);
          std::_Exit(71);
        }
      }
    }).detach();
    return created;
  }();
  return *state;
}

#if MPSTS_CATCH2_MAJOR >= 3
using ListenerBase = Catch::EventListenerBase;
#else
using ListenerBase = Catch::TestEventListenerBase;
#endif

struct WatchdogListener : ListenerBase {
  using ListenerBase::ListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    set(info.name);
  }
  void testCaseEnded(const Catch::TestCaseStats&) override {
    set("");
  }
  static void set(const std::string& test) {
    WatchdogState& state = watchdog();
    std::lock_guard<std::mutex> lock(state.mutex);
    state.test = test;
    ++state.generation;
    state.changed.notify_all();
  }
};

} // namespace

CATCH_REGISTER_LISTENER(WatchdogListener)

int main(int argc, char* argv[]) {
  return Catch::Session().run(argc, argv);
}
