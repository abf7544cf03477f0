#pragma once

// The seeded schedule mode: named race points where operations of different threads may meet,
// and, when a seed is set, a deterministic perturbation of the calling thread at each of them.
//
// Note [Seeded schedules]
// Off (the default, and always in production) a race point costs one relaxed atomic load and
// a predictable branch. On (schedule::enable(seed)), at every race point the calling thread
// does what a generator derived from (seed, thread ordinal, point, hit count of that point on
// this thread) decides: nothing, a yield, a sleep of 1..maxSleepUs microseconds, or a spin of
// 1..maxSpinUs microseconds. The decisions depend only on those four numbers, never on time or
// on other threads, so the same seed gives every thread the same sequence of delays at the
// same points.
//
// What "replayable" honestly means here: this is schedule *perturbation* (as in PCT-style
// delay injection, or TSan's "random sleeps"), not deterministic scheduling. The seed fixes
// the delays; the OS still decides who runs when, so a seed that exposed a race reproduces it
// with high probability, not certainty (the figures in docs/reliability.md say how often).
// A fully deterministic scheduler (CHESS, loom: one thread runnable at a time, a token handed
// over at each race point) would have to own every blocking point of the runtime and the sim
// — std::mutex, condition variables with timeouts, the serial executors, the sim's GPU and
// handler threads, thread creation and thread_local destructors — by replacing them with
// instrumented versions. That is a rewrite of the sync layer of both (and would no longer test
// the real primitives), so it is not done; see docs/reliability.md "Why not a deterministic
// scheduler".
//
// Thread ordinals: a thread that calls schedule::setThreadOrdinal(n) (the exploration driver
// numbers its workers) uses n; any other thread (the sim's GPU and handler threads, threads a
// test spawns) gets 1000 + the order in which it first reached a race point in this epoch.

#include <atomic>
#include <cstdint>

namespace at::mps::threadsafe {

// Every place where operations of two threads may meet. Keep in sync with pointName().
enum class SchedulePoint : uint8_t {
  DispatchEnter, // Stream::dispatch, before entering the serial queue
  DispatchExit, // Stream::dispatch, the body done, before close requests are served
  CommitSignal, // commitBatch, before the timeline signal is encoded
  CommitSubmitted, // commitBatch, after commit/commitAndContinue, before the stores
  CommitPublish, // commitBatch, committed, before the new batch state is published
  CloseRequest, // requestClose / serveCloseRequests
  EnsureSubmitted, // ensureSubmitted, each turn of its loop
  WaitStreamRead, // waitStream, between reading hasUncommittedWork and the batch number
  BufferDependencies, // useBuffers, after the dependencies are read (and uses recorded), before the waits
  BufferRecord, // useBuffers, after the waits, before the uses are settled on their batch
  PendingFreesAdd, // PendingFrees::add
  PendingFreesTake, // PendingFrees::takeReusable
  EventRecord, // Event::record, between the commit and storing (stream, batch)
  EventWait, // Event::wait / synchronize, after reading (stream, batch)
  PolicyRead, // currentStream, after reading the thread policy
  SetThreadsafe, // setThreadsafe, between its check and its store
  DeviceSynchronize, // synchronizeDevice, between committing and waiting
  ThreadUnbind, // a thread's stream given back (thread exit or releaseThreadStream)
  GpuKernel, // sim GPU thread, before a kernel runs
  GpuComplete, // sim GPU thread, a segment done, before its handlers are posted
  CompletionHandler, // Stream::onBatchCompleted, before it publishes the completion
  ErrorDelivery, // a GPU error about to be raised to a caller
  kCount,
};
constexpr int kSchedulePointCount = static_cast<int>(SchedulePoint::kCount);

namespace schedule {

struct Options {
  uint32_t maxSleepUs = 50; // upper bound of one sleep
  uint32_t maxSpinUs = 20; // upper bound of one spin
  // Per mille of hits that do nothing, yield, sleep; the rest spin.
  uint32_t nothingPermille = 400;
  uint32_t yieldPermille = 250;
  uint32_t sleepPermille = 200;
};

// Turns the schedule mode on with `seed` for every thread (a new epoch: hit counts and
// automatic ordinals restart). Not to be called while another thread is inside a race point
// of the previous epoch's work that the caller cares about.
void enable(uint64_t seed, Options options = {});
void disable();
bool enabled();
uint64_t seed();
// Names the calling thread for the generator (Note [Seeded schedules]).
void setThreadOrdinal(uint32_t ordinal);
const char* pointName(SchedulePoint point);
// SplitMix64's finalizer: the generator behind every seeded decision (also the exploration
// driver's, so a seed means the same stream of numbers everywhere).
uint64_t splitmix64(uint64_t x);

// How many race points were hit and perturbed since the last enable(): shows the mode acts.
struct Stats {
  uint64_t hits = 0;
  uint64_t yields = 0;
  uint64_t sleeps = 0;
  uint64_t spins = 0;
  uint64_t hitsPerPoint[kSchedulePointCount] = {};
};
Stats stats();

namespace detail {
extern std::atomic<bool> gEnabled;
void perturb(SchedulePoint point);
} // namespace detail

} // namespace schedule

// A race point (Note [Seeded schedules]): one relaxed load when the schedule mode is off.
inline void racePoint(SchedulePoint point) {
  if (__builtin_expect(schedule::detail::gEnabled.load(std::memory_order_relaxed), 0)) {
    schedule::detail::perturb(point);
  }
}

} // namespace at::mps::threadsafe
