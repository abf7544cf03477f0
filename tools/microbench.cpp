// Microbenchmark of the runtime on the sim device (./build.sh bench). Not a test: it prints
// numbers, as a Markdown table that docs/benchmarks.md quotes.
//
// 1. Encode-path overhead, one thread, uncontended: nanoseconds per op for each layer of the
//    path an ATen op takes (queue entry; encoder lease + encode; cross-stream use tracking;
//    serialization domain + shared object). The "GPU" work is a no-op kernel, and the stream
//    commits (COMMIT, amortized into the figure) only every 1000 ops, so what is timed is the
//    CPU cost of encoding, not execution. The sim device's own bookkeeping (storing the kernel,
//    checking Metal's rules) is part of it; on Metal the driver's encode cost replaces it.
// 2. Throughput of N threads, each op = K kernels of real CPU work (default 2 x 20 us) run by
//    the sim device's GPU threads, then COMMIT_AND_WAIT (an op is a model call whose result is
//    read back), in three arrangements:
//    (a) per-thread streams: thread safety on, every protection on;
//    (b) one shared stream: thread safety off (upstream default): every thread encodes on the
//        default stream through its serial queue, protections on;
//    (c) a global mutex around each whole op, threads on the default stream: what users do
//        today (a Python lock around every model call).
//    Each thread warms up, then a barrier starts the clock; threads run until the time is up,
//    and every op, the last included, ends with the thread syncing its own stream.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli_args.h"
#include "encode_op.h"
#include "format.h"
#include "machine_info.h"

namespace {

using namespace mpsts::tools;
using Clock = std::chrono::steady_clock;

struct BenchOptions {
  std::vector<int> threads{1, 2, 4, 8, 16};
  double seconds = 2.0; // measured time per (arrangement, thread count)
  double kernelUs = 20;
  int kernelsPerOp = 2;
  int warmupOps = 20; // per thread, before the clock starts
  long overheadOps = 200'000;
};

const char* kUsage =
    "usage: microbench [options]\n"
    "  Encode-path overhead per op (one thread), then throughput of 1..N threads with\n"
    "  (a) per-thread streams, (b) one shared stream, (c) a global mutex around each op.\n"
    "  --threads LIST       thread counts (default 1,2,4,8,16)\n"
    "  --seconds S          measured seconds per arrangement and thread count (default 2)\n"
    "  --kernel-us US       CPU work of one kernel in microseconds (default 20)\n"
    "  --kernels-per-op K   kernels encoded per op before COMMIT_AND_WAIT (default 2)\n"
    "  --overhead-ops N     ops timed per overhead row (default 200000)\n"
    "  --quick              smoke run: 0.2 s per cell, 20000 overhead ops\n";

// ---- Real work for the kernels ---------------------------------------------------------------

// A dependent chain of float multiply-adds: it cannot be vectorized away, and its duration per
// iteration is stable, so calibrate() can size a kernel in microseconds.
float burn(uint64_t iterations, float seed) {
  float x = seed;
  for (uint64_t i = 0; i < iterations; ++i) {
    x = x * 0.9999999f + 0.0000001f;
  }
  return x;
}

// Iterations of burn() that take `microseconds` on this machine (best of several tries, so a
// descheduled try does not shrink the kernels).
uint64_t calibrate(double microseconds) {
  constexpr uint64_t kProbe = 2'000'000;
  double bestNs = 1e300;
  volatile float sink = 0;
  for (int attempt = 0; attempt < 7; ++attempt) {
    auto start = Clock::now();
    sink = burn(kProbe, 1.0f + sink);
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    bestNs = std::min(bestNs, ns);
  }
  double nsPerIteration = bestNs / static_cast<double>(kProbe);
  return std::max<uint64_t>(1, static_cast<uint64_t>(microseconds * 1000.0 / nsPerIteration));
}

std::unique_ptr<ts::Runtime> makeRuntime(bool threadsafe, ts::sim::SimDevice** device) {
  ts::sim::Config config;
  // A violation here would be a runtime bug: count it and fail the run at the end rather than
  // abort in the middle of a table.
  config.policy = ts::sim::ViolationPolicy::Count;
  auto owned = std::make_unique<ts::sim::SimDevice>(config);
  *device = owned.get();
  ts::RuntimeOptions options;
  options.threadsafe = threadsafe;
  options.protections = ts::Protections::all();
  return std::make_unique<ts::Runtime>(std::move(owned), options);
}

uint64_t totalViolations = 0;

// ---- 1. Encode-path overhead ----------------------------------------------------------------

struct OverheadRow {
  const char* what;
  double nsPerOp;
};

// Times `ops` calls of encodeOne(runtime, stream) on a fresh runtime, COMMIT every 1000 (timed).
template <class EncodeOne>
double timeEncodePath(long ops, EncodeOne encodeOne) {
  ts::sim::SimDevice* device = nullptr;
  auto runtime = makeRuntime(/*threadsafe=*/true, &device);
  ts::Stream& stream = runtime->currentStream();
  constexpr long kCommitEvery = 1000;
  for (long i = 0; i < 2 * kCommitEvery; ++i) { // warm-up: stream, encoder, caches created
    encodeOne(*runtime, stream);
  }
  synchronize(stream, ts::SyncType::COMMIT_AND_WAIT);

  auto start = Clock::now();
  for (long i = 1; i <= ops; ++i) {
    encodeOne(*runtime, stream);
    if (i % kCommitEvery == 0) {
      synchronize(stream, ts::SyncType::COMMIT);
    }
  }
  double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
  synchronize(stream, ts::SyncType::COMMIT_AND_WAIT); // not timed: the GPU side
  totalViolations += device->stats().violations;
  return ns / static_cast<double>(ops);
}

std::vector<OverheadRow> measureOverhead(long ops) {
  static float weights[16];
  static float output[16];
  ts::BufferUse uses[] = {reads(weights), writes(output)};
  ts::sim::SharedObject pipeline("bench pipeline");
  std::vector<OverheadRow> rows;

  {
    std::mutex mutex;
    auto start = Clock::now();
    for (long i = 0; i < ops; ++i) {
      std::lock_guard<std::mutex> lock(mutex);
      output[i % 16] += 1.0f;
    }
    double ns = std::chrono::duration<double, std::nano>(Clock::now() - start).count();
    rows.push_back(
        {"reference: uncontended std::mutex lock + unlock", ns / static_cast<double>(ops)});
  }
  rows.push_back({"dispatch() of an empty function (serial queue entry)",
                  timeEncodePath(ops, [](ts::Runtime&, ts::Stream& s) { s.dispatch([] {}); })});
  rows.push_back({"dispatch + leaseEncoder + encode a no-op kernel",
                  timeEncodePath(ops, [](ts::Runtime&, ts::Stream& s) {
                    encodeKernel(s, nullptr, 0, [] {});
                  })});
  rows.push_back({"  + useBuffers (1 read, 1 write)",
                  timeEncodePath(ops, [&](ts::Runtime&, ts::Stream& s) {
                    encodeKernel(s, uses, 2, [] {});
                  })});
  rows.push_back({"  + layer_norm domain + shared object (dispatchWith)",
                  timeEncodePath(ops, [&](ts::Runtime& rt, ts::Stream& s) {
                    encodeSharedKernel(rt, s, uses, 2, pipeline, "layer_norm", [] {});
                  })});
  return rows;
}

// ---- 2. Throughput --------------------------------------------------------------------------

enum class Arrangement { PerThreadStreams, SharedStream, GlobalMutex };

struct Cell {
  double opsPerSecond = 0;
  uint64_t maxActiveStreams = 0;
  uint64_t maxConcurrentQueues = 0;
};

Cell measureThroughput(Arrangement arrangement, int threads, const BenchOptions& options,
                       uint64_t burnIterations) {
  ts::sim::SimDevice* device = nullptr;
  auto runtime = makeRuntime(arrangement == Arrangement::PerThreadStreams, &device);
  std::mutex globalMutex; // (c) only
  static float weights[64];
  std::latch start(threads + 1);
  std::atomic<bool> stop{false};
  std::vector<uint64_t> opsDone(static_cast<size_t>(threads), 0);
  std::vector<std::thread> workers;

  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      std::vector<float> output(static_cast<size_t>(options.kernelsPerOp), 1.0f);
      auto op = [&] {
        ts::Stream& stream = runtime->currentStream();
        for (int k = 0; k < options.kernelsPerOp; ++k) {
          float* out = &output[static_cast<size_t>(k)];
          ts::BufferUse uses[] = {reads(weights), writes(out)};
          encodeKernel(stream, uses, 2,
                       [out, burnIterations] { *out = burn(burnIterations, *out); });
        }
        synchronize(stream, ts::SyncType::COMMIT_AND_WAIT);
      };
      auto guardedOp = [&] {
        if (arrangement == Arrangement::GlobalMutex) {
          std::lock_guard<std::mutex> lock(globalMutex);
          op();
        } else {
          op();
        }
      };
      for (int i = 0; i < options.warmupOps; ++i) {
        guardedOp();
      }
      start.arrive_and_wait();
      uint64_t done = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        guardedOp();
        ++done;
      }
      opsDone[static_cast<size_t>(t)] = done;
    });
  }

  start.arrive_and_wait();
  auto began = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(options.seconds));
  stop.store(true);
  for (auto& worker : workers) {
    worker.join();
  }
  double seconds = std::chrono::duration<double>(Clock::now() - began).count();

  Cell cell;
  uint64_t ops = 0;
  for (uint64_t done : opsDone) {
    ops += done;
  }
  cell.opsPerSecond = static_cast<double>(ops) / seconds;
  cell.maxActiveStreams = runtime->stats().maxActiveStreams;
  ts::sim::Stats stats = device->stats();
  cell.maxConcurrentQueues = stats.maxConcurrentQueues;
  totalViolations += stats.violations;
  return cell;
}

} // namespace

int main(int argc, char** argv) {
  CliArgs args(argc, argv, kUsage);
  BenchOptions options;
  if (args.flag("--quick")) {
    options.seconds = 0.2;
    options.overheadOps = 20'000;
    options.warmupOps = 5;
  }
  options.threads = args.integerList("--threads", options.threads, 256);
  options.seconds = args.real("--seconds", options.seconds, 0.01, 3600);
  options.kernelUs = args.real("--kernel-us", options.kernelUs, 0.01, 1e6);
  options.kernelsPerOp =
      static_cast<int>(args.integer("--kernels-per-op", options.kernelsPerOp, 1, 1000));
  options.overheadOps = args.integer("--overhead-ops", options.overheadOps, 1000, 1'000'000'000);
  args.finish();

  std::printf("# mps_threadsafe microbenchmark (sim device)\n\n");
  std::printf("Machine: %s\n\n", machineDescription().c_str());

  std::printf("## Encode-path overhead, one thread, uncontended\n\n");
  std::printf(
      "%ld ops per row after a warm-up; no-op kernels; COMMIT every 1000 ops (included);\n"
      "the final wait for the GPU side is not timed.\n\n",
      options.overheadOps);
  std::printf("| encode path | ns/op |\n|---|---:|\n");
  for (const OverheadRow& row : measureOverhead(options.overheadOps)) {
    std::printf("| %s | %.0f |\n", row.what, row.nsPerOp);
  }
  std::fflush(stdout);

  uint64_t burnIterations = calibrate(options.kernelUs);
  std::printf("\n## Throughput vs threads\n\n");
  std::printf(
      "Op = %d kernel%s of %.1f us CPU work each (%llu multiply-add iterations, calibrated)\n"
      "run on the sim device's GPU threads, then COMMIT_AND_WAIT. %.2f s per cell after\n"
      "%d warm-up ops per thread.\n"
      "(a) per-thread streams, threadsafe on; (b) one shared stream (threadsafe off, the\n"
      "upstream default) through its serial queue; (c) global mutex around each op, threads\n"
      "on the default stream (what users do today). Efficiency of (a) = ops_n / (n * ops_1).\n\n",
      options.kernelsPerOp, options.kernelsPerOp == 1 ? "" : "s", options.kernelUs,
      static_cast<unsigned long long>(burnIterations), options.seconds, options.warmupOps);
  std::printf(
      "| threads | (a) per-thread streams ops/s | (b) shared stream ops/s | (c) global mutex ops/s "
      "| a/b | a/c | efficiency (a) | (a) streams / GPU queues at once |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  double singleThreadOps = 0;
  for (int threads : options.threads) {
    Cell a = measureThroughput(Arrangement::PerThreadStreams, threads, options, burnIterations);
    Cell b = measureThroughput(Arrangement::SharedStream, threads, options, burnIterations);
    Cell c = measureThroughput(Arrangement::GlobalMutex, threads, options, burnIterations);
    if (threads == 1) {
      singleThreadOps = a.opsPerSecond;
    }
    std::string efficiency =
        singleThreadOps > 0 ? std::to_string(static_cast<int>(
                                  100.0 * a.opsPerSecond / (threads * singleThreadOps) + 0.5)) +
                                  "%"
                            : "n/a";
    std::printf("| %d | %s | %s | %s | %.2f | %.2f | %s | %llu / %llu |\n", threads,
                withCommas(a.opsPerSecond).c_str(), withCommas(b.opsPerSecond).c_str(),
                withCommas(c.opsPerSecond).c_str(), a.opsPerSecond / b.opsPerSecond,
                a.opsPerSecond / c.opsPerSecond, efficiency.c_str(),
                static_cast<unsigned long long>(a.maxActiveStreams),
                static_cast<unsigned long long>(a.maxConcurrentQueues));
    std::fflush(stdout);
  }

  if (totalViolations != 0) {
    std::printf("\nFAIL: the sim device reported %llu violations with protections on\n",
                static_cast<unsigned long long>(totalViolations));
    return 1;
  }
  std::printf("\nSim violations in every run: 0.\n");
  return 0;
}
