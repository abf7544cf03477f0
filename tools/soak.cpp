// The schedule-exploration driver and soak (docs/reliability.md): rounds of threaded runtime
// operations on the sim device under seeded schedules (Note [Seeded schedules] in
// aten_mps/schedule.h), each checked against a sequential reference and the counters.
// Needs only CMake and a C++20 compiler (no Catch2): configure with -DBUILD_TESTING=OFF.
//
//   soak explore [--seeds N] [--seed-base B] [--only OP]   every pair of ops x N seeds (2 threads)
//   soak soak [--threads 8] [--rounds R | --minutes M] [--seed-base B]
//                                                   random N-thread rounds; RSS start/mid/end
//   soak replay --seed S --ops A,B[,...] [--partners i,j,...] [--repeat K]
//
// Common options: --no-schedule (no perturbation: the baseline), --max-sleep-us N,
// --max-spin-us N, --unprotect LIST (comma-separated protections to switch off: serialQueue,
// domains, crossStreamOrder, deferredFrees: the rounds must then fail), --force-reuse-window
// (Note [Forcing the reuse window] in tests/explore/exploration.h), --pool P and
// --threadsafe 0|1 (fix what each round's seed would draw), --quiet.
// Exit status: 0 when every round passed, 1 when any failed, 2 on bad arguments.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cli_args.h"
#include "machine_info.h"
#include "explore/exploration.h"

namespace {

using namespace mpsts::explore;
using mpsts::tools::CliArgs;

const char* kUsage =
    "usage: soak explore|soak|replay [options]\n"
    "  explore   every unordered pair of ops (2 threads), --seeds N each (default 20);\n"
    "            --only OP: only the pairs with OP\n"
    "  soak      random rounds of --threads N ops (default 8), --rounds R (default 12500,\n"
    "            i.e. 100,000 op-rounds on 8 threads) or --minutes M (runs until then)\n"
    "  replay    one round: --seed S --ops A,B,... [--partners i,j,...] [--repeat K]\n"
    "options:\n"
    "  --seed-base B       first seed (default 1)\n"
    "  --no-schedule       no seeded perturbation (baseline)\n"
    "  --max-sleep-us N    longest sleep at a race point (default 50)\n"
    "  --max-spin-us N     longest spin at a race point (default 20)\n"
    "  --unprotect LIST    switch protections off: serialQueue,domains,crossStreamOrder,\n"
    "                      deferredFrees (the exploration must then find failures)\n"
    "  --force-reuse-window  make certain that stale writes to freed blocks land while a Reuse\n"
    "                      consumer holds the recycled block (rounds with Reuse, policy on,\n"
    "                      pool >= 2N+1, no DeviceSync/SetThreadsafe; with --unprotect\n"
    "                      deferredFrees every such round must fail)\n"
    "  --pool P            pool size of every round (1..64; default: drawn from the seed)\n"
    "  --threadsafe 0|1    initial thread policy of every round (default: drawn from the seed)\n"
    "  --quiet             print only the summary and failures\n";

// Resident set size in KiB (Linux: /proc/self/statm; elsewhere 0 = unknown).
long rssKiB() {
  std::ifstream statm("/proc/self/statm");
  long pages = 0;
  long resident = 0;
  if (statm >> pages >> resident) {
    return resident * 4; // 4 KiB pages on the machines this runs on (x86-64, arm64 Linux)
  }
  return 0;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ',')) {
    if (!part.empty()) {
      parts.push_back(part);
    }
  }
  return parts;
}

void printTally(const char* what, const Tally& t, double seconds) {
  std::printf(
      "%s: %llu rounds, %llu checked op-rounds, %llu values checked, %.1f s (%.0f rounds/s)\n"
      "  failed rounds %llu | wrong results %llu | violations %llu | unexpected errors/hangs %llu"
      " | counter mismatches %llu\n"
      "  GPU errors delivered %llu (error rounds) | policy switches refused %llu | race-point"
      " hits %llu | rounds with streams in parallel %llu\n"
      "  error rounds checked exactly %llu | known gaps: errors nobody received %llu, frees"
      " pending on a never-committed batch %llu, rounds where synchronize kept raising %llu,\n  silent wrong reads on a stream shared with a failed batch %llu, readers that waited on a failed batch without error %llu\n",
      what, static_cast<unsigned long long>(t.rounds), static_cast<unsigned long long>(t.opRounds),
      static_cast<unsigned long long>(t.valuesChecked), seconds,
      seconds > 0 ? static_cast<double>(t.rounds) / seconds : 0.0,
      static_cast<unsigned long long>(t.failedRounds),
      static_cast<unsigned long long>(t.wrongResults), static_cast<unsigned long long>(t.violations),
      static_cast<unsigned long long>(t.unexpectedErrors),
      static_cast<unsigned long long>(t.reconcileFailures),
      static_cast<unsigned long long>(t.errorsDelivered),
      static_cast<unsigned long long>(t.refusedSwitches),
      static_cast<unsigned long long>(t.racePointHits),
      static_cast<unsigned long long>(t.parallelRounds),
      static_cast<unsigned long long>(t.isolatedErrorRounds),
      static_cast<unsigned long long>(t.errorsLost), static_cast<unsigned long long>(t.phantomFrees),
      static_cast<unsigned long long>(t.stickyErrorRounds),
      static_cast<unsigned long long>(t.silentGarbage),
      static_cast<unsigned long long>(t.readersWithoutError));
  if (t.reuseWindowsForced > 0) {
    std::printf("  rounds with the reuse window forced %llu\n",
                static_cast<unsigned long long>(t.reuseWindowsForced));
  }
  for (const std::string& failure : t.failures) {
    std::printf("  FAILED %s\n", failure.c_str());
  }
  for (const std::string& gap : t.gaps) {
    std::printf("  known gap: %s\n", gap.c_str());
  }
  std::fflush(stdout);
}

double secondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argv[1][0] == '-') {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  const std::string mode = argv[1];
  CliArgs args(argc - 1, argv + 1, kUsage);
  ExploreOptions options;
  options.schedule = !args.flag("--no-schedule");
  options.maxSleepUs = static_cast<uint32_t>(args.integer("--max-sleep-us", 50, 1, 100000));
  options.maxSpinUs = static_cast<uint32_t>(args.integer("--max-spin-us", 20, 1, 100000));
  options.forceReuseWindow = args.flag("--force-reuse-window");
  for (const std::string& name : split(args.text("--unprotect", ""))) {
    if (name == "serialQueue") {
      options.protections.serialQueue = false;
    } else if (name == "domains") {
      options.protections.domains = false;
    } else if (name == "crossStreamOrder") {
      options.protections.crossStreamOrder = false;
    } else if (name == "deferredFrees") {
      options.protections.deferredFrees = false;
    } else {
      std::fprintf(stderr, "unknown protection '%s'\n%s", name.c_str(), kUsage);
      return 2;
    }
  }
  const bool quiet = args.flag("--quiet");
  // 0 / -1: drawn from each round's seed.
  const int poolSize = static_cast<int>(args.integer("--pool", 0, 0, 64));
  const int threadsafe = static_cast<int>(args.integer("--threadsafe", -1, -1, 1));
  const uint64_t seedBase = static_cast<uint64_t>(args.integer("--seed-base", 1, 0, 1L << 62));
  std::printf("soak %s on %s\n", mode.c_str(), mpsts::tools::machineDescription().c_str());
  const auto start = std::chrono::steady_clock::now();
  Tally total;

  if (mode == "explore") {
    const long seeds = args.integer("--seeds", 20, 1, 1000000);
    const std::string only = args.text("--only", "");
    args.finish();
    Op onlyOp = Op::kCount;
    if (!only.empty() && !parseOp(only, onlyOp)) {
      std::fprintf(stderr, "unknown op '%s'\n", only.c_str());
      return 2;
    }
    auto pairs = allPairs();
    if (onlyOp != Op::kCount) {
      std::erase_if(pairs, [&](const auto& pair) {
        return pair.first != onlyOp && pair.second != onlyOp;
      });
    }
    std::printf("%zu pairs x %ld seeds (seeds %llu..%llu)\n", pairs.size(), seeds,
                static_cast<unsigned long long>(seedBase),
                static_cast<unsigned long long>(seedBase + static_cast<uint64_t>(seeds) - 1));
    for (const auto& [a, b] : pairs) {
      Tally pairTally;
      for (long s = 0; s < seeds; ++s) {
        RoundSpec spec;
        spec.ops = {a, b};
        spec.seed = seedBase + static_cast<uint64_t>(s);
        spec.poolSize = poolSize;
        spec.threadsafe = threadsafe;
        pairTally.add(runRound(spec, options));
      }
      if (!quiet || pairTally.failedRounds > 0) {
        std::printf("  %-17s x %-17s %3llu/%llu rounds failed\n", opName(a), opName(b),
                    static_cast<unsigned long long>(pairTally.failedRounds),
                    static_cast<unsigned long long>(pairTally.rounds));
        std::fflush(stdout);
      }
      total.add(pairTally);
    }
    printTally("explore", total, secondsSince(start));
  } else if (mode == "soak") {
    const int threads = static_cast<int>(args.integer("--threads", 8, 1, 256));
    const double minutes = args.real("--minutes", 0, 0, 100000);
    const long rounds = args.integer("--rounds", minutes > 0 ? 0 : 12500, 0, 1L << 40);
    args.finish();
    const long rssStart = rssKiB();
    long rssMiddle = 0;
    std::printf("threads %d, %s, seeds from %llu; RSS at start %ld KiB\n", threads,
                minutes > 0 ? (std::to_string(minutes) + " minutes").c_str()
                            : (std::to_string(rounds) + " rounds").c_str(),
                static_cast<unsigned long long>(seedBase), rssStart);
    std::fflush(stdout);
    const double limit = minutes * 60;
    double nextReport = limit > 0 ? limit / 10 : 0;
    uint64_t seed = seedBase;
    for (long r = 0;; ++r, ++seed) {
      const double elapsed = secondsSince(start);
      if (limit > 0 ? elapsed >= limit : r >= rounds) {
        break;
      }
      if (rssMiddle == 0 && (limit > 0 ? elapsed >= limit / 2 : r >= rounds / 2)) {
        rssMiddle = rssKiB();
        std::printf("  middle: round %ld, RSS %ld KiB\n", r, rssMiddle);
        std::fflush(stdout);
      }
      RoundSpec spec = randomRound(threads, seed);
      spec.poolSize = poolSize;
      spec.threadsafe = threadsafe;
      Tally tally = runRound(spec, options);
      if (tally.failedRounds > 0) {
        for (const std::string& failure : tally.failures) {
          std::printf("  FAILED %s\n", failure.c_str());
        }
        std::fflush(stdout);
      }
      total.add(tally);
      if (!quiet && ((limit > 0 && elapsed >= nextReport) ||
                     (limit == 0 && rounds >= 10 && (r + 1) % (rounds / 10) == 0))) {
        std::printf("  %.0f s: %llu rounds, %llu failed, RSS %ld KiB\n", elapsed,
                    static_cast<unsigned long long>(total.rounds),
                    static_cast<unsigned long long>(total.failedRounds), rssKiB());
        std::fflush(stdout);
        nextReport += limit / 10;
      }
    }
    const long rssEnd = rssKiB();
    printTally("soak", total, secondsSince(start));
    std::printf("  seeds %llu..%llu on %d threads; RSS start %ld KiB, middle %ld KiB, end %ld KiB\n",
                static_cast<unsigned long long>(seedBase),
                static_cast<unsigned long long>(seed - 1), threads, rssStart, rssMiddle, rssEnd);
  } else if (mode == "replay") {
    RoundSpec spec;
    spec.seed = static_cast<uint64_t>(args.integer("--seed", 1, 0, 1L << 62));
    for (const std::string& name : split(args.text("--ops", ""))) {
      Op op;
      if (!parseOp(name, op)) {
        std::fprintf(stderr, "unknown op '%s'\n", name.c_str());
        return 2;
      }
      spec.ops.push_back(op);
    }
    for (const std::string& index : split(args.text("--partners", ""))) {
      spec.partners.push_back(std::atoi(index.c_str()));
    }
    spec.poolSize = poolSize;
    spec.threadsafe = threadsafe;
    const long repeat = args.integer("--repeat", 1, 1, 1000000);
    args.finish();
    if (spec.ops.empty() || (!spec.partners.empty() && spec.partners.size() != spec.ops.size())) {
      std::fprintf(stderr, "replay needs --ops (and as many --partners, if given)\n%s", kUsage);
      return 2;
    }
    for (int partner : spec.partners) {
      if (partner < 0 || partner >= static_cast<int>(spec.ops.size())) {
        std::fprintf(stderr, "partner %d out of range\n", partner);
        return 2;
      }
    }
    std::printf("%s, %ld times\n", describe(spec).c_str(), repeat);
    for (long r = 0; r < repeat; ++r) {
      Tally tally = runRound(spec, options);
      if (tally.failedRounds > 0 && !quiet) {
        std::printf("  run %ld: %s\n", r, tally.failures.front().c_str());
      }
      total.add(tally);
    }
    printTally("replay", total, secondsSince(start));
  } else {
    std::fprintf(stderr, "unknown mode '%s'\n%s", mode.c_str(), kUsage);
    return 2;
  }
  return total.failedRounds == 0 ? 0 : 1;
}
