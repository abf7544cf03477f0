// Process exit with threads and work still in flight (Note [Runtime lifetime]): a child whose
// deliberately leaked runtime has 8 threads mid-run (and a device synchronizer) when main
// returns must exit 0, with no signal, every time. An earlier attempt at this problem crashed
// in static destruction in 55% of short runs.

#include "stress_workload.h"

namespace mpsts_test {
namespace {

// The process-wide runtime of the child, leaked like the torch device's (never deleted).
// Global so that LeakSanitizer sees it as reachable, as it would be in ATen.
Runtime* leakedRuntime = nullptr;
StressWorkload* leakedWorkload = nullptr;
std::atomic<bool> neverStop{false};

const char* const kExitChild = "exit child: 8 threads mid-run on a leaked runtime when main returns";

} // namespace

TEST_CASE("exit child: 8 threads mid-run on a leaked runtime when main returns", "[.exit_child]") {
  RuntimeOptions options;
  options.threadsafe = true;
  // Policy Abort (crash-faithful): any violation kills the child, which the parent sees.
  leakedRuntime = new Runtime(std::make_unique<sim::SimDevice>(), options);
  StressOptions stress;
  stress.slots = 8;
  leakedWorkload = new StressWorkload(*leakedRuntime, stress);
  for (int slot = 0; slot < 8; ++slot) {
    std::thread([slot] { leakedWorkload->workerUntil(slot, neverStop, 77 + slot); }).detach();
  }
  std::thread([] {
    for (;;) {
      leakedRuntime->synchronizeDevice();
      std::this_thread::sleep_for(1ms); // pacing only
    }
  }).detach();
  // Return only once every thread is well into its run, so exit finds them mid-run.
  REQUIRE(eventually([] { return leakedWorkload->counts().ops.load() >= 400; }, 20000ms));
}

TEST_CASE("process exit with 8 threads and work in flight ends cleanly, 20 times out of 20",
          "[exit]") {
  const int runs = 20;
  int clean = 0;
  for (int run = 0; run < runs; ++run) {
    ChildResult child = runSelf(kExitChild, {}, 60000ms);
    CAPTURE(run);
    INFO("child " << describe(child));
    CHECK(child.exited);
    CHECK(child.exitCode == 0);
    CHECK(child.signal == 0);
    if (child.exited && child.exitCode == 0) {
      ++clean;
    }
  }
  REQUIRE(clean == runs);
}

} // namespace mpsts_test
