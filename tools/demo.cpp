// The threaded demo (./build.sh's main job until the Python suites exist): the same workload
// on the sim device twice.
//
// - protections OFF: upstream's situation. Thread safety off (every thread on the default
//   stream), Protections::none() (no serial queue, no domains, no cross-stream ordering), the
//   sim device counting the breaches of Metal's rules that crash a real Mac, with short race
//   windows so the races show up on any machine. It must catch violations: otherwise the
//   demo proves nothing.
// - protections ON: thread safety on (a pool stream per thread), Protections::all(). It must
//   show zero violations, every thread's results equal to the same computation on the CPU,
//   and more than one stream encoding at the same time (parallelism, not a hidden lock).
//
// Each run happens in a child process (isolated_run.h): an unprotected run that crashes or
// hangs, as the real backend does, is reported with what it counted before, never retried.
// Exit status 0 only when both runs behave as stated above.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <latch>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cli_args.h"
#include "encode_op.h"
#include "format.h"
#include "isolated_run.h"
#include "machine_info.h"

namespace {

using namespace mpsts::tools;

struct DemoOptions {
  int threads = 8;
  int iterations = 1000;
  int commitEvery = 4; // COMMIT after every 4th op
  int sharedEvery = 5; // every 5th op is the shared layer_norm kernel
  int elements = 1024; // floats per thread buffer
  int kernelRounds = 4;
  int raceWindowUs = 3;
  double timeoutSeconds = 120;
  bool inProcess = false;
  std::string only; // "protected" or "unprotected": run that mode alone
};

const char* kUsage =
    "usage: demo [options]\n"
    "  Runs one threaded workload on the sim device with the runtime's protections off, then\n"
    "  on, and compares: violations caught, results, throughput, streams used at once.\n"
    "  --threads N         worker threads (default 8)\n"
    "  --iterations N      ops per thread (default 1000)\n"
    "  --commit-every N    COMMIT after every Nth op (default 4)\n"
    "  --shared-every N    every Nth op encodes the shared layer_norm kernel (default 5)\n"
    "  --elements N        floats per thread buffer (default 1024)\n"
    "  --kernel-rounds N   multiply-add rounds per element in a kernel (default 4)\n"
    "  --race-window-us N  sim race window at each race point, both runs (default 3)\n"
    "  --timeout S         seconds before a run counts as hung (default 120)\n"
    "  --in-process        run in this process (debugging; a crash ends the demo)\n"
    "  --only MODE         run one mode alone: 'protected' or 'unprotected' (the protected run\n"
    "                      alone is the one to run under ThreadSanitizer: the unprotected one\n"
    "                      races by design)\n";

// ---- The kernels: real float math, run by the sim device's GPU threads. -------------------

// acc = acc * 0.75 + weights * coefficient, `rounds` times: 4 * rounds flops per element.
void accumulateKernel(float* acc, const float* weights, size_t n, float coefficient, int rounds) {
  for (size_t i = 0; i < n; ++i) {
    float x = acc[i];
    for (int round = 0; round < rounds; ++round) {
      x = x * 0.75f + weights[i] * coefficient;
    }
    acc[i] = x;
  }
}

// In-place layer norm with gamma = weights: the kernel of the shared cached object.
void layerNormKernel(float* acc, const float* gamma, size_t n) {
  double sum = 0, squares = 0;
  for (size_t i = 0; i < n; ++i) {
    sum += acc[i];
    squares += static_cast<double>(acc[i]) * acc[i];
  }
  double mean = sum / static_cast<double>(n);
  double variance = squares / static_cast<double>(n) - mean * mean;
  float inverse = static_cast<float>(1.0 / std::sqrt(std::max(variance, 0.0) + 1e-5));
  for (size_t i = 0; i < n; ++i) {
    acc[i] = (acc[i] - static_cast<float>(mean)) * inverse * gamma[i];
  }
}

void fillWeightsKernel(float* weights, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    weights[i] = 0.5f + 0.001f * static_cast<float>(i % 101);
  }
}

float coefficient(int op, int thread) {
  return 0.001f * static_cast<float>((op + thread) % 13 + 1);
}

float initialValue(int thread, size_t i) {
  return 0.01f * static_cast<float>(thread + 1) + 0.0001f * static_cast<float>(i % 97);
}

// ---- One run -------------------------------------------------------------------------------

enum class Mode { Unprotected, Protected };

// Written by the run as it goes, read by the parent even if the run crashed.
struct RunReport {
  static constexpr int kMessages = 4;
  static constexpr int kText = 200;
  std::atomic<uint64_t> opsDone{0};
  std::atomic<uint64_t> violations{0};
  std::atomic<uint64_t> errorsRaised{0}; // exceptions the runtime raised to the workload
  std::atomic<int> phase{0}; // 0 running, 1 workload done and checked, 2 runtime torn down
  double seconds = 0;
  uint64_t maxActiveStreams = 0;
  uint64_t streamsUsed = 0;
  uint64_t kernelsEncoded = 0, kernelsExecuted = 0;
  int threadsCorrect = 0;
  int distinctMessages = 0;
  uint64_t messagesKept = 0; // the device keeps the latest messages only
  char messages[kMessages][kText] = {};
  uint64_t messageCounts[kMessages] = {};
  std::atomic<bool> firstErrorSet{false};
  char firstError[kText] = {};
};

void copyText(char (&dest)[RunReport::kText], const std::string& text) {
  size_t n = std::min(text.size(), sizeof(dest) - 1);
  std::memcpy(dest, text.data(), n);
  dest[n] = '\0';
}

std::string firstLine(const std::string& text) {
  return text.substr(0, text.find('\n'));
}

// A violation message without its object addresses, so that one kind of breach on one kind
// of object counts as one line however many objects it hit.
std::string withoutAddresses(const std::string& message) {
  std::string line = firstLine(message), out;
  for (size_t i = 0; i < line.size();) {
    if (line.compare(i, 2, "0x") == 0 && i + 2 < line.size() &&
        std::isxdigit(static_cast<unsigned char>(line[i + 2]))) {
      out += "0x...";
      for (i += 2; i < line.size() && std::isxdigit(static_cast<unsigned char>(line[i])); ++i) {}
    } else {
      out += line[i++];
    }
  }
  return out;
}

class DemoRun {
 public:
  DemoRun(const DemoOptions& options, Mode mode, RunReport& report)
      : options_(options), report_(report) {
    at::mps::threadsafe::sim::Config config;
    config.policy = at::mps::threadsafe::sim::ViolationPolicy::Count;
    for (auto& window : config.raceWindowUs) {
      window = static_cast<uint32_t>(options.raceWindowUs);
    }
    auto device = std::make_unique<ts::sim::SimDevice>(config);
    device_ = device.get();
    ts::RuntimeOptions runtimeOptions;
    runtimeOptions.threadsafe = mode == Mode::Protected;
    runtimeOptions.protections =
        mode == Mode::Protected ? ts::Protections::all() : ts::Protections::none();
    runtime_ = std::make_unique<ts::Runtime>(std::move(device), runtimeOptions);
  }

  void run() {
    size_t n = static_cast<size_t>(options_.elements);
    std::vector<float> weights(n, 0.0f);
    std::vector<std::vector<float>> buffers(static_cast<size_t>(options_.threads));
    for (int t = 0; t < options_.threads; ++t) {
      auto& buffer = buffers[static_cast<size_t>(t)];
      buffer.resize(n);
      for (size_t i = 0; i < n; ++i) {
        buffer[i] = initialValue(t, i);
      }
    }

    // The weights are written on the main thread's stream and read by every worker: with
    // protections on, the workers' first reads wait for this write (cross-stream ordering).
    {
      ts::Stream& stream = runtime_->currentStream();
      ts::BufferUse use = writes(weights.data());
      float* data = weights.data();
      encodeKernel(stream, &use, 1, [data, n] { fillWeightsKernel(data, n); });
      synchronize(stream, ts::SyncType::COMMIT);
    }

    std::latch start(options_.threads + 1);
    std::atomic<int> running{options_.threads};
    std::vector<std::thread> workers;
    for (int t = 0; t < options_.threads; ++t) {
      workers.emplace_back([&, t] {
        start.arrive_and_wait();
        work(t, weights.data(), buffers[static_cast<size_t>(t)].data());
        running.fetch_sub(1);
      });
    }
    start.arrive_and_wait();
    auto began = std::chrono::steady_clock::now();
    while (running.load() > 0) {
      report_.violations.store(device_->stats().violations);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    for (auto& worker : workers) {
      worker.join();
    }
    report_.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();

    ts::RuntimeStats runtimeStats = runtime_->stats();
    report_.maxActiveStreams = runtimeStats.maxActiveStreams;
    for (const auto& stream : runtimeStats.streams) {
      report_.streamsUsed += stream.opsEncoded > 0 ? 1 : 0;
    }
    for (int t = 0; t < options_.threads; ++t) {
      report_.threadsCorrect += matchesCpu(t, buffers[static_cast<size_t>(t)]) ? 1 : 0;
    }
    recordViolations();
    report_.phase.store(1);

    runtime_.reset(); // drains every queue: teardown is part of what is checked
    report_.phase.store(2);
  }

 private:
  void work(int thread, const float* weights, float* acc) {
    size_t n = static_cast<size_t>(options_.elements);
    for (int op = 0; op < options_.iterations; ++op) {
      try {
        // Looked up per op, as ATen's getCurrentMPSStream() is.
        ts::Stream& stream = runtime_->currentStream();
        ts::BufferUse uses[] = {reads(weights), writes(acc)};
        if ((op + 1) % options_.sharedEvery == 0) {
          encodeSharedKernel(*runtime_, stream, uses, 2, layerNorm_, "layer_norm",
                             [acc, weights, n] { layerNormKernel(acc, weights, n); });
        } else {
          float c = coefficient(op, thread);
          encodeKernel(stream, uses, 2, [acc, weights, n, c, rounds = options_.kernelRounds] {
            accumulateKernel(acc, weights, n, c, rounds);
          });
        }
        if ((op + 1) % options_.commitEvery == 0) {
          synchronize(stream, ts::SyncType::COMMIT);
        }
      } catch (const std::exception& e) {
        noteError(e);
      }
      report_.opsDone.fetch_add(1);
    }
    try {
      synchronize(runtime_->currentStream(), ts::SyncType::COMMIT_AND_WAIT);
    } catch (const std::exception& e) {
      noteError(e);
    }
  }

  void noteError(const std::exception& e) {
    report_.errorsRaised.fetch_add(1);
    if (!report_.firstErrorSet.exchange(true)) {
      copyText(report_.firstError, firstLine(e.what()));
    }
  }

  // The thread's ops replayed on the CPU with the same kernels.
  bool matchesCpu(int thread, const std::vector<float>& result) const {
    size_t n = result.size();
    std::vector<float> weights(n), expected(n);
    fillWeightsKernel(weights.data(), n);
    for (size_t i = 0; i < n; ++i) {
      expected[i] = initialValue(thread, i);
    }
    for (int op = 0; op < options_.iterations; ++op) {
      if ((op + 1) % options_.sharedEvery == 0) {
        layerNormKernel(expected.data(), weights.data(), n);
      } else {
        accumulateKernel(expected.data(), weights.data(), n, coefficient(op, thread),
                         options_.kernelRounds);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (!(std::fabs(result[i] - expected[i]) <= 1e-5f * (1.0f + std::fabs(expected[i])))) {
        return false;
      }
    }
    return true;
  }

  void recordViolations() {
    ts::sim::Stats stats = device_->stats();
    report_.violations.store(stats.violations);
    report_.kernelsEncoded = stats.kernelsEncoded;
    report_.kernelsExecuted = stats.kernelsExecuted;
    std::map<std::string, uint64_t> byMessage;
    std::vector<std::string> messages = device_->violationMessages();
    report_.messagesKept = messages.size();
    for (const std::string& message : messages) {
      byMessage[withoutAddresses(message)] += 1;
    }
    std::vector<std::pair<uint64_t, std::string>> ranked;
    for (auto& [message, count] : byMessage) {
      ranked.emplace_back(count, message);
    }
    std::sort(ranked.begin(), ranked.end(),
              [](const auto& a, const auto& b) { return a.first > b.first; });
    report_.distinctMessages = static_cast<int>(ranked.size());
    for (size_t i = 0; i < ranked.size() && i < RunReport::kMessages; ++i) {
      report_.messageCounts[i] = ranked[i].first;
      copyText(report_.messages[i], ranked[i].second);
    }
  }

  const DemoOptions& options_;
  RunReport& report_;
  ts::sim::SimDevice* device_; // owned by runtime_
  std::unique_ptr<ts::Runtime> runtime_;
  ts::sim::SharedObject layerNorm_{"layer_norm pipeline"};
};

struct ModeResult {
  ChildOutcome outcome;
  bool ranInChild = false;
};

ModeResult runMode(const DemoOptions& options, Mode mode, RunReport& report) {
  ModeResult result;
  auto body = [&] { DemoRun(options, mode, report).run(); };
  if (options.inProcess) {
    body();
    result.outcome.exited = true;
    return result;
  }
  result.ranInChild = true;
  result.outcome = runInChild(body, options.timeoutSeconds);
  return result;
}

// ---- Printing ------------------------------------------------------------------------------

void printMode(const char* title, const DemoOptions& options, const RunReport& report,
               const ModeResult& result) {
  std::printf("\n%s\n", title);
  std::string outcome = "finished";
  if (!result.outcome.exited || result.outcome.exitStatus != 0) {
    outcome = result.outcome.describe();
    if (report.phase.load() == 1) {
      outcome += ", after the workload, while the runtime was torn down";
    } else if (report.phase.load() == 0) {
      outcome += ", during the workload";
    }
  }
  uint64_t totalOps =
      static_cast<uint64_t>(options.threads) * static_cast<uint64_t>(options.iterations);
  std::printf("  outcome            : %s\n", outcome.c_str());
  std::printf("  violations caught  : %s\n", withCommas(report.violations.load()).c_str());
  if (report.distinctMessages > 0) {
    std::printf("    the latest %s messages, by kind:\n", withCommas(report.messagesKept).c_str());
  }
  for (int i = 0; i < RunReport::kMessages && i < report.distinctMessages; ++i) {
    std::printf("    %8s x %s\n", withCommas(report.messageCounts[i]).c_str(), report.messages[i]);
  }
  if (report.distinctMessages > RunReport::kMessages) {
    std::printf("    ... and %d more kinds\n", report.distinctMessages - RunReport::kMessages);
  }
  std::printf("  runtime errors     : %s%s%s\n", withCommas(report.errorsRaised.load()).c_str(),
              report.firstError[0] ? "  first: " : "", report.firstError);
  if (report.phase.load() >= 1) {
    std::printf("  results vs CPU     : %d/%d threads correct\n", report.threadsCorrect,
                options.threads);
    std::printf("  kernels            : %s encoded, %s executed\n",
                withCommas(report.kernelsEncoded).c_str(),
                withCommas(report.kernelsExecuted).c_str());
    double opsPerSecond = report.seconds > 0 ? static_cast<double>(totalOps) / report.seconds : 0.0;
    std::printf("  throughput         : %s ops/s (%s ops in %.3f s)\n",
                withCommas(static_cast<uint64_t>(opsPerSecond)).c_str(),
                withCommas(totalOps).c_str(), report.seconds);
    std::printf(
        "  streams            : %llu used; maxActiveStreams %llu (most inside dispatch() at "
        "once)\n",
        static_cast<unsigned long long>(report.streamsUsed),
        static_cast<unsigned long long>(report.maxActiveStreams));
  } else {
    std::printf("  ops attempted      : %s of %s before it stopped\n",
                withCommas(report.opsDone.load()).c_str(), withCommas(totalOps).c_str());
  }
}

// What the protected run must show: a clean finish, no violation, no error, the CPU's results,
// and streams that really encoded at the same time.
void checkProtectedRun(const DemoOptions& options, const RunReport& on, const ModeResult& result,
                       std::vector<std::string>& failures) {
  if (!result.outcome.exited || result.outcome.exitStatus != 0 || on.phase.load() != 2) {
    failures.push_back("the protected run did not finish cleanly: " + result.outcome.describe());
  }
  if (on.violations.load() != 0) {
    failures.push_back("the protected run had " + std::to_string(on.violations.load()) +
                       " violations");
  }
  if (on.errorsRaised.load() != 0) {
    failures.push_back("the protected run raised " + std::to_string(on.errorsRaised.load()) +
                       " errors");
  }
  if (on.phase.load() >= 1 && on.threadsCorrect != options.threads) {
    failures.push_back("the protected run's results differ from the CPU on " +
                       std::to_string(options.threads - on.threadsCorrect) + " threads");
  }
  if (on.phase.load() >= 1 && options.threads > 1 && on.maxActiveStreams < 2) {
    failures.push_back("the protected run never had two streams encoding at once");
  }
}

} // namespace

int main(int argc, char** argv) {
  CliArgs args(argc, argv, kUsage);
  DemoOptions options;
  options.threads = static_cast<int>(args.integer("--threads", options.threads, 1, 256));
  options.iterations =
      static_cast<int>(args.integer("--iterations", options.iterations, 1, 10'000'000));
  options.commitEvery =
      static_cast<int>(args.integer("--commit-every", options.commitEvery, 1, 1'000'000));
  options.sharedEvery =
      static_cast<int>(args.integer("--shared-every", options.sharedEvery, 1, 1'000'000));
  options.elements = static_cast<int>(args.integer("--elements", options.elements, 1, 1 << 24));
  options.kernelRounds =
      static_cast<int>(args.integer("--kernel-rounds", options.kernelRounds, 1, 1 << 20));
  options.raceWindowUs =
      static_cast<int>(args.integer("--race-window-us", options.raceWindowUs, 0, 100'000));
  options.timeoutSeconds = args.real("--timeout", options.timeoutSeconds, 1, 86400);
  options.inProcess = args.flag("--in-process");
  options.only = args.text("--only", "");
  if (!options.only.empty() && options.only != "protected" && options.only != "unprotected") {
    args.fail("--only takes 'protected' or 'unprotected', got '" + options.only + "'");
  }
  args.finish();

  std::printf("mps_threadsafe demo: %d threads x %d ops on the sim device\n", options.threads,
              options.iterations);
  std::printf("machine: %s\n", machineDescription().c_str());
  std::printf(
      "each op: dispatch into the current stream; useBuffers(shared weights: read, own buffer:\n"
      "write); lease the encoder; encode a kernel over %d floats (every %dth op: layer_norm on\n"
      "a pipeline object shared by all threads, under its domain); COMMIT every %d ops;\n"
      "COMMIT_AND_WAIT at each thread's end. Sim race windows: %d us at each race point, in\n"
      "both runs (the same workload and device settings; the windows' sleeps dominate the\n"
      "throughput shown here: ./build.sh bench measures throughput without them).\n",
      options.elements, options.sharedEvery, options.commitEvery, options.raceWindowUs);

  SharedReport<RunReport> off, on;
  std::vector<std::string> failures;
  if (options.only != "protected") {
    ModeResult offResult = runMode(options, Mode::Unprotected, *off);
    printMode(
        "protections OFF  (threadsafe=false: all threads on the default stream; "
        "Protections::none(); sim policy Count)",
        options, *off, offResult);
    if (off->violations.load() == 0) {
      failures.push_back(
          "the unprotected run caught no violations, so this workload proves nothing");
    }
  }
  if (options.only != "unprotected") {
    ModeResult onResult = runMode(options, Mode::Protected, *on);
    printMode("protections ON   (threadsafe=true: a pool stream per thread; Protections::all())",
              options, *on, onResult);
    checkProtectedRun(options, *on, onResult, failures);
  }

  std::printf("\n");
  if (!failures.empty()) {
    for (const auto& failure : failures) {
      std::printf("FAIL: %s\n", failure.c_str());
    }
    return 1;
  }
  if (options.only != "protected") {
    std::printf("OK: unprotected, the sim device caught %s violations (what crashes a real Mac)\n",
                withCommas(off->violations.load()).c_str());
  }
  if (options.only != "unprotected") {
    std::printf(
        "OK: protected, 0 violations, all %d threads match the CPU, up to %llu streams "
        "encoding at once\n",
        options.threads, static_cast<unsigned long long>(on->maxActiveStreams));
  }
  return 0;
}
