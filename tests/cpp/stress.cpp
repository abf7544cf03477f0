// Threaded stress (stress_workload.h): with the protections on, no violation, every op's
// effects accounted for and streams really overlapped; with them off, the same workload on
// shared streams makes the sim report violations — the proof that the stress can fail.

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include <unistd.h>

#include "stress_workload.h"

namespace mpsts_test {
namespace {

void requireCleanProtectedRun(SimRuntime& env, StressWorkload& workload, int slots) {
  StressCounts& counts = workload.counts();
  env.rt().synchronizeDevice(); // after every worker exited: all their batches were submitted
  env.rt().releaseThreadStream(); // a no-op unless this thread encoded: nothing stays bound
  // Handlers run on the queue's handler thread, possibly after the batch's own completion.
  bool handlersDone = eventually([&] { return counts.handlersRan == counts.handlersAdded; });
  sim::Stats device = env.device().stats();
  RuntimeStats runtime = env.rt().stats();
  std::vector<std::string> errors;
  {
    std::lock_guard<std::mutex> lock(counts.errorsMutex);
    errors = counts.errors;
  }
  for (const auto& error : errors) {
    UNSCOPED_INFO("worker error: " << error);
  }
  for (const auto& message : env.device().violationMessages()) {
    UNSCOPED_INFO("violation: " << message);
  }
  INFO("ops " << counts.ops << ", kernels " << counts.kernelsEncoded << "/" << counts.kernelsRan
              << ", handlers " << counts.handlersAdded << "/" << counts.handlersRan
              << ", events " << counts.eventsRecorded << " (" << counts.eventsSynchronized
              << " synchronized), buffer writes/reads " << counts.bufferWrites << "/"
              << counts.bufferReads << ", device syncs " << counts.deviceSyncs
              << ", maxActiveStreams " << runtime.maxActiveStreams << ", maxConcurrentQueues "
              << device.maxConcurrentQueues);
  REQUIRE(errors.empty());
  REQUIRE(counts.violationsCaught == 0);
  REQUIRE(device.violations == 0);
  REQUIRE(runtime.contractViolations == 0);
  // Nothing silently dropped.
  REQUIRE(counts.workersFinished == static_cast<uint64_t>(slots) * 4);
  REQUIRE(device.kernelsEncoded == device.kernelsExecuted);
  REQUIRE(device.kernelsEncoded == counts.kernelsEncoded);
  REQUIRE(counts.kernelsRan == counts.kernelsEncoded);
  REQUIRE(device.kernelsFailed == 0);
  REQUIRE(handlersDone);
  REQUIRE(counts.handlersAdded > 0);
  REQUIRE(counts.eventsRecorded > 0);
  REQUIRE(workload.allEventsComplete());
  REQUIRE(device.segmentsCommitted == device.segmentsCompleted);
  for (const StreamStats& stream : runtime.streams) {
    CAPTURE(stream.id);
    REQUIRE(stream.completedBatch == stream.submittedBatch);
    REQUIRE(stream.owners == 0);
  }
  // Cross-stream ordering held on real data.
  REQUIRE(counts.bufferWrites > 0);
  REQUIRE(counts.bufferReads > 0);
  REQUIRE(counts.tornReads == 0);
  // Parallelism, not a hidden global lock: streams were inside their queues and GPU queues
  // executed at the same time.
  REQUIRE(runtime.maxActiveStreams >= 2);
  REQUIRE(device.maxConcurrentQueues >= 2);
  REQUIRE(runtime.threadsBound >= static_cast<uint64_t>(slots) * 4);
  REQUIRE(runtime.threadsReleased >= static_cast<uint64_t>(slots) * 4);
  REQUIRE(counts.deviceSyncs > 0);
}

void runProtected(int slots, int opsPerWorker, uint32_t seed) {
  RuntimeOptions options;
  options.threadsafe = true;
  // Throw: a violation raises in the worker (counted there) instead of ending the process.
  SimRuntime env(options, throwingConfig());
  {
    StressOptions stress;
    stress.slots = slots;
    stress.lifetimes = 4;
    stress.opsPerWorker = opsPerWorker;
    stress.seed = seed;
    StressWorkload workload(env.rt(), stress);
    workload.run();
    requireCleanProtectedRun(env, workload, slots);
  }
}

// Reads "name value" lines written by the unprotected child.
std::map<std::string, uint64_t> readReport(const std::string& path) {
  std::map<std::string, uint64_t> values;
  std::ifstream in(path);
  std::string name;
  uint64_t value = 0;
  while (in >> name >> value) {
    values[name] = value;
  }
  return values;
}

} // namespace

TEST_CASE("stress: 8 threads of mixed ops, protections on: no violation, nothing dropped, "
          "streams overlap",
          "[stress][threads]") {
  runProtected(8, scaled(400, 25), 8);
}

TEST_CASE("stress: 16 threads of mixed ops, protections on: no violation, nothing dropped, "
          "streams overlap",
          "[stress][threads]") {
  runProtected(16, scaled(250, 15), 16);
}

// The deliberately unprotected run, in a child process: with the runtime's protections off
// the runtime's own state is raced too, so the child may crash or hang; it reports the sim's
// violation count as it goes, and the parent counts a crash instead of being killed by it.
TEST_CASE("stress child: unprotected run", "[.stress_child]") {
  const char* reportPath = std::getenv("MPSTS_CHILD_REPORT");
  REQUIRE(reportPath != nullptr);
  RuntimeOptions options;
  options.threadsafe = false; // every thread on the default stream
  options.protections = Protections::none();
  sim::Config config;
  config.policy = sim::ViolationPolicy::Count;
  for (auto point : {sim::RacePoint::EncoderCall, sim::RacePoint::CommandBufferCall,
                     sim::RacePoint::SharedObjectEncode}) {
    config.raceWindowUs[static_cast<size_t>(point)] = 20;
  }
  // Leaked: the unprotected runtime may be left inconsistent; never run its destructor.
  auto* env = new SimRuntime(options, config);
  StressOptions stress;
  stress.slots = 8;
  stress.lifetimes = 2;
  stress.opsPerWorker = scaled(100, 20);
  auto* workload = new StressWorkload(env->rt(), stress);
  auto report = [env, workload, reportPath](bool finished) {
    std::string temporary = std::string(reportPath) + ".tmp";
    {
      std::ofstream out(temporary);
      out << "violations " << env->device().stats().violations << "\n"
          << "ops " << workload->counts().ops.load() << "\n"
          << "finished " << (finished ? 1 : 0) << "\n";
    }
    std::rename(temporary.c_str(), reportPath);
  };
  // Reports every 20 ms and ends the child after 20 s if the unprotected run hangs.
  std::thread([report] {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20) * slowdown();
    while (std::chrono::steady_clock::now() < end) {
      report(false);
      std::this_thread::sleep_for(20ms);
    }
    report(false);
    std::_Exit(0);
  }).detach();
  workload->run();
  report(true);
  std::_Exit(0);
}

TEST_CASE("stress: protections off, threads sharing the default stream: the sim reports "
          "violations",
          "[stress][threads][unprotected]") {
  char reportTemplate[] = "/tmp/mpsts_report_XXXXXX";
  int fd = mkstemp(reportTemplate);
  REQUIRE(fd >= 0);
  close(fd);
  std::remove(reportTemplate);
  ChildResult child = runSelf("stress child: unprotected run",
                              {std::string("MPSTS_CHILD_REPORT=") + reportTemplate,
                               // The child races on purpose; TSan judges the protected runs.
                               "TSAN_OPTIONS=report_bugs=0"},
                              60000ms);
  std::map<std::string, uint64_t> report = readReport(reportTemplate);
  std::remove(reportTemplate);
  INFO("child " << describe(child));
  INFO("child report: violations " << report["violations"] << ", ops " << report["ops"]
                                   << ", finished " << report["finished"]);
  REQUIRE(report.count("violations") == 1);
  REQUIRE(report["violations"] > 0);
}

} // namespace mpsts_test
