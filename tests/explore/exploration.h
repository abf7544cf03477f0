#pragma once

// Schedule exploration (Note [Seeded schedules] in aten_mps/schedule.h): rounds of threaded
// operations on a fresh runtime over the sim device, each run under a seeded schedule and
// checked against a sequential reference and the runtime's own bookkeeping.
//
// A round: the main thread writes an input buffer (on its own stream, sometimes left
// uncommitted), then N worker threads each run one operation (Op). Every operation first
// *produces*: it writes its own row of one shared buffer `base` (disjoint views of one
// tensor, issue 8 item 1) with real integer arithmetic on the input, in the way the op names
// (which SyncType, coalesced kernels, a thread that exits with its batch open, ...). Consumer
// operations then wait (on the CPU) until their partner has produced and read the partner's
// row through the mechanism they name (waitStream, waitForStream/close request, an Event,
// the buffer-use tracker, a recycled allocator block). After the workers are joined the main
// thread reads every row (through the tracker, or synchronizeDevice + a CPU read) and
// compares everything with the reference, then reconciles the counters (see Invariants in
// docs/reliability.md). Used by the Catch2 test tests/cpp/schedule_exploration.cpp and the
// standalone tools/soak.cpp (which needs no Catch2).

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "aten_mps/protections.h"

namespace mpsts::explore {

// What one worker thread does in a round. Keep in sync with opName().
enum class Op : uint8_t {
  Dispatch, // two coalesced kernels, SyncType::NONE: the batch stays open until thread exit
  Commit, // SyncType::COMMIT
  CommitAndContinue, // SyncType::COMMIT_AND_CONTINUE
  CommitAdaptive, // SyncType::COMMIT_ADAPTIVE (memory-pressure probe alternates)
  CommitAndWait, // SyncType::COMMIT_AND_WAIT
  CloseRequest, // consumer: waitForStream(partner, partner's exact batch) -> close request
  WaitStream, // consumer: waitStream(mine, partner's stream), then an untracked read
  TrackedRead, // consumer: useBuffers(base: read) orders the read
  EventWait, // consumer: Event recorded on the partner's stream; GPU wait or CPU synchronize
  Reuse, // consumer: through allocator blocks freed to PendingFrees and taken back
  SetThreadsafe, // flips the thread policy (may be refused: WorkInFlightError), then commits
  DeviceSync, // synchronizeDevice(), then reads its own row on the CPU
  ThreadExit, // a child thread produces and exits; after join, synchronizeDevice + CPU read
  GpuError, // produces, then a kernel that fails on the GPU in the same batch
  kCount,
};
constexpr int kOpCount = static_cast<int>(Op::kCount);
const char* opName(Op op);
// Parses a name as printed by opName (case-insensitive); false if unknown.
bool parseOp(const std::string& name, Op& op);

struct RoundSpec {
  std::vector<Op> ops; // one worker thread per entry; partner of i is partners[i]
  std::vector<int> partners; // empty: (i + 1) % size
  uint64_t seed = 1; // the schedule seed and the round's data/shape choices
  int poolSize = 0; // 0: drawn from the seed (1, 2, 4 or 8)
  int threadsafe = -1; // initial thread policy; -1: drawn from the seed (on 3 rounds in 4)
};

struct ExploreOptions {
  bool schedule = true; // seeded perturbation at the race points
  uint32_t maxSleepUs = 50;
  uint32_t maxSpinUs = 20;
  // The runtime's protections for every round (turning one off must make rounds fail).
  at::mps::threadsafe::Protections protections = at::mps::threadsafe::Protections::all();
  double hangSeconds = 20; // a round taking longer is reported as a hang and the process exits
  // Note [Forcing the reuse window]: in rounds where it applies (a Reuse op, thread policy
  // on, pool >= 2N+1, no DeviceSync or SetThreadsafe op), latches in the kernels make certain
  // that the main stream's stale writes to the blocks it freed land while a Reuse consumer
  // holds the recycled block: after its first copy into the block, before its copy out.
  bool forceReuseWindow = false;
};

// What a round (or many) found. Rounds and op-rounds count what was run and checked.
struct Tally {
  uint64_t rounds = 0;
  uint64_t opRounds = 0; // worker operations run and checked
  uint64_t valuesChecked = 0; // words compared with the reference
  uint64_t failedRounds = 0;
  uint64_t wrongResults = 0; // words that differ from the reference
  uint64_t violations = 0; // sim violations (policy Count) and runtime contract violations
  uint64_t unexpectedErrors = 0; // exceptions a correct run does not raise
  uint64_t reconcileFailures = 0; // counters that do not add up
  uint64_t errorsDelivered = 0; // CommandBufferErrors raised in rounds with a GpuError op
  uint64_t isolatedErrorRounds = 0; // error rounds whose delivery was checked exactly
  uint64_t errorsLost = 0; // failed kernels whose error no caller ever received (F2, fixed)
  // A reader that waited on a failed batch (exact checks) and received no error (F5, fixed).
  uint64_t readersWithoutError = 0;
  uint64_t phantomFrees = 0; // frees left pending on a batch never committed (known gap)
  uint64_t stickyErrorRounds = 0; // device synchronize raised one error 4 times in a row
  uint64_t silentGarbage = 0; // wrong values read with no error, on a stream shared with a failure (known gap)
  uint64_t refusedSwitches = 0; // setThreadsafe refused (WorkInFlightError): allowed
  uint64_t racePointHits = 0;
  uint64_t parallelRounds = 0; // rounds where two streams were inside their queues at once
  uint64_t reuseWindowsForced = 0; // rounds whose reuse window was forced (forceReuseWindow)
  std::vector<std::string> failures; // first failures, each naming its replay command
  std::vector<std::string> gaps; // first occurrences of findings F1–F3 (required to be 0 by the [schedule] tests)
  void add(const Tally& other);
};

// Runs one round and checks it. Never throws for a failed check: it is counted in the tally.
Tally runRound(const RoundSpec& spec, const ExploreOptions& options);

// The ops of an N-thread round picked from the seed (soak rounds).
RoundSpec randomRound(int threads, uint64_t seed);
// Every unordered pair of ops (including an op with itself), in a fixed order.
std::vector<std::pair<Op, Op>> allPairs();

// The command that replays a round with the soak tool.
std::string replayCommand(const RoundSpec& spec);
std::string describe(const RoundSpec& spec);

} // namespace mpsts::explore
