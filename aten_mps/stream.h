#pragma once

// One stream: a command queue, the command buffer being filled, the compute encoder kept
// open across consecutive kernels (kernel coalescing), a serial executor, and a timeline
// event the stream signals at the end of every batch it commits.
//
// Note [Batches and the timeline]
// The work a stream encodes between two commits is a batch, numbered 1, 2, 3, ... in commit
// order. Committing batch N encodes "signal timeline = N" at its end, so another stream can
// make the GPU wait for it (encodeWaitForEvent(timeline, N)), and a completion handler
// raises completedBatch() to N so a CPU thread can wait for it. Anything that needs "the
// work this stream has done up to now" is therefore a single number: the event API, the
// device-wide synchronize and the allocator's use tracking are all built on it, and none of
// them has to touch the stream's open command buffer.
//
// Note [On the queue]
// Every read or write of the command buffer, the encoder and the batch state happens inside
// dispatch(), i.e. on the stream's serial executor. The accessors below check it and raise
// ContractError otherwise (upstream PR 198039 asserts the same in commandEncoder()). Only the
// atomics documented as "any thread" may be read from outside.
// "On the executor" is what counts, however the thread got there: a raw
// dispatch_sync(torch::mps::get_dispatch_queue(), ^{...}) block is on the queue too (issue
// 8.11). That is PyTorch's documented pattern for custom Metal kernels (docs "Custom Metal
// kernels" / torch::mps::get_command_buffer + get_dispatch_queue), and it is as safe as
// dispatch(): the executor is serial, so nobody else touches the stream meanwhile. What a raw
// block does not get is what dispatch() adds around the body: C++ exceptions are not carried
// back (GCD blocks must not throw), close requests are served only when the block has left
// (the waiter commits from inside the queue once it is free), and ReentryError / the
// nested-queue check rely on the executor's own reentry check. Off the executor (no dispatch,
// no raw block) every accessor raises ContractError.
//
// Note [Closing a batch on request]
// A stream that must wait for work another stream has encoded but not yet committed cannot
// wait for it on the GPU: the other batch is still open and may later wait on ours, and two
// open batches waiting on each other would hang the GPU. So the waiter first gets that batch
// committed: it posts a close request (requestClose), then, while the batch stays open,
// (a) commits it itself if the other stream's queue is free right now (tryDispatchSync: it
//     never blocks, so no two queues are ever entered in a blocking way),
// (b) commits its own open batch if someone asked for it, so two streams waiting on each
//     other both make progress, and
// (c) otherwise sleeps briefly on the other stream's progress. The other stream's thread
//     commits at the end of its current dispatch (serveCloseRequests).
// Every GPU wait is thus on a batch already committed, which only holds waits encoded before
// it, so the waits never form a cycle.
//
// Note [GPU errors belong to batches]
// A command buffer that fails on the GPU fails its batch (stream, N); the error is kept with
// that batch, not with the stream, and is raised to everything that depends on the batch,
// with the stream, the batch and the kernel's own message in it. Metal skips the rest of a
// failed command buffer, so *all* work in batch N is lost, not only the failing kernel's: on
// a stream shared by several threads (more threads than pool streams, or threadsafe off)
// their neighbours' kernels in N are lost too. So the batch remembers the threads that
// encoded work into it (its participants), and "told" is per thread, never per stream:
// - in stream order: later batches of the same stream may read what the lost work left, so
//   they carry the failure too, until the failure is settled: every participant of N has
//   been told on its own thread (its COMMIT_AND_WAIT, a device synchronize or any raise of
//   it reached that thread: acknowledge()) or has given the stream back (giveBack(); a pool
//   stream never carries an error to its next owner). One participant being told (or
//   leaving) settles nothing for the others (the explorer's F1: thread A's failure was told
//   to A, and thread B, whose kernels in N were skipped, read zeros after Event.synchronize);
// - across streams: a batch that waited on the GPU for a failed batch (useBuffers' ordering,
//   waitStream, Event::wait) is failed with the same cause ("poisoned"): its reader gets the
//   error, never the zeros the failed kernel left (a wait that only orders, a write after
//   reads or a covering write after writes, poisons nothing: Note [Overwriting a failed
//   write]). Waits are recorded per batch at commit, with the scope they were made with, and
//   resolved lazily, by whoever asks (failureOf), since the failed batch's completion handler
//   may run after the dependent's;
// - a wait on an already failed batch (waitForStream) raises at once;
// - a wait for a batch of the waiter's own stream (waitForStream(self, N), Event::wait of an
//   event recorded on it, waitStream(s, s)) needs no GPU wait, stream order has it, but it is
//   a dependency all the same: it is recorded (or raised at once) like a wait on another
//   stream. Stream order alone does not carry a failure to a pool stream's next owner (below),
//   so without it the next owner, reading the output of the failed batch its predecessor left
//   behind, read zeros silently (the explorer's F5: the pool hands a thread the stream another
//   thread has just given back);
// - the cause names the root failure once, however long the chain of dependents: "batch 7 of
//   stream 3 depends on failed batch 5 of stream 2: <kernel message>", never the dependent's
//   dependent's ... message (a tensor rewritten in a loop after a failure grew its error by one
//   clause per round);
// - what a caller depends on decides what it gets (FailureScope):
//   * a reader of batch b's outputs through the tracker (Reader: useBuffers' dependencies,
//     which name the exact batch of each write): the failure of b itself, and of an earlier
//     batch N of the stream that one of b's own threads had work in and was not told of
//     (that thread may have encoded b reading what N's lost work left). The next owner of a
//     pool stream shares no thread with the failed batch: its readers are clean (issue 8.2:
//     a pool stream never carries an error to its next owner);
//   * an Event of (stream, M), waited on the CPU (Event::synchronize) or the GPU
//     (Event::wait), waitStream, and waitForStream(stream, M) (Event): such a wait covers
//     everything the stream ran up to M, whoever encoded it, so it raises any failure of a
//     batch <= M while one of that batch's threads has not been told on its own thread (a
//     thread that left untold cannot have passed the loss on to whoever reads its results
//     through the wait). One scope for all of them: the same Event waited on the CPU or on
//     the GPU gives the same answer (before F5 the GPU wait carried only the failure of
//     batch M itself). The price: while such a thread lives on untold, or after it left
//     untold, every such wait on that stream raises it (bounded by kMaxRememberedBatches),
//     an event the pool stream's next owner records on it included. Readers through the
//     tracker (useBuffers) are exact; only a read ordered by an event or a stream wait,
//     bypassing the tracker, needs this breadth;
//   * device and stream synchronize, COMMIT_AND_WAIT (Synchronize): the unsettled failures
//     (above) the calling thread was not yet told of, so a failure does not stay sticky for
//     everyone once its threads were told or left, nor for a thread that was told while
//     another participant never is (the autograd engine's worker thread encodes backward
//     kernels into the caller's batch and never synchronizes: before, every synchronize of
//     every thread raised its failure until the stream forgot the batch, 1024 batches on).
// - A participant that gives the stream back untold hands the failure to the next
//   device-wide synchronize, exactly once (orphaned errors; like CUDA's asynchronous errors,
//   reported by the next synchronize), never to the next owner of the pool stream: nobody
//   else is left who could be told, and issue 8 lists synchronize() among the dependents.
// A thread whose work depends on no failed batch never receives the error. Failures are kept
// for the last kMaxRememberedBatches failed batches of a stream, and batch dependencies and
// participants for as many batches: an error older than that is no longer delivered (counted
// in gpuErrors).
//
// Note [Overwriting a failed write]
// What useBuffers orders an op after is not always what it depends on. A read depends on the
// writes it waits for; so does a write that covers only part of the buffer: the rest still
// holds what the lost work left, and once this write is recorded the tracker forgets the
// earlier writer, so the buffer's next reader could only learn of the loss through this
// write's batch. Two waits are ordering only and never carry a failure to the waiting batch:
// - a write after reads (WAR): a failed reader left nothing in the buffer;
// - a write that covers the whole buffer and reads none of it (BufferUse::coversBuffer) after
//   earlier writes (WAW): nothing of the lost work survives it.
// So once a failure was raised, x.fill_(1), x.zero_() or x.copy_(src) make x clean again, as
// on the CPU; any read of x before that (on any stream, the failing thread's included) still
// raises. On the failing batch's own stream the rules of stream order above still hold: a
// covering write is clean once the threads of the failed batch were told (or left); before
// that, stream order carries the failure to it like to any later batch of theirs. A covering
// write in the failed batch itself is lost with it. Only the caller knows that a write covers
// the buffer (the mps_sim glue: the whole storage of an allocator block, python/csrc/
// tensor_uses.h); a wrong claim would turn a lost write into silent garbage, so the default
// is false. What an op inherits is the failure of every batch it reads from, not of the
// latest batch it waits for per stream: that one may be clean while an earlier one failed.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend.h"
#include "diagnostics.h"
#include "function_ref.h"
#include "stream_context.h"

namespace at::mps::threadsafe {

class EncoderLease;

// What a caller asking for a batch's failure depends on (Note [GPU errors belong to batches]).
enum class FailureScope : uint8_t {
  Reader,      // the outputs of that batch, as the tracker names them (useBuffers)
  Event,       // everything the stream ran up to that batch (Event wait/synchronize,
               // waitStream, waitForStream)
  Synchronize, // the caller's own synchronize of the stream or the device
};

// One buffer an op is about to encode a use of.
struct BufferUse {
  enum class Access : uint8_t { Read, Write };
  const void* buffer;
  Access access;
  // A write that overwrites every byte of the buffer anyone can read, and reads none of it
  // (fill_, zero_, copy_ into the whole storage): Note [Overwriting a failed write]. False
  // unless the caller knows it; false is always safe.
  bool coversBuffer = false;
};

class Stream {
 public:
  // `context` must outlive the stream (Note [A stream knows its context, not its runtime]).
  Stream(const StreamContext& context, int id, Device& device);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  int id() const {
    return id_;
  }

  // ---- Entering the queue (any thread) ------------------------------------------------
  // dispatch_sync_with_rethrow: runs fn on the calling thread inside this stream's serial
  // queue, then serves close requests (Note [Closing a batch on request]). Raises
  // ReentryError when called from inside this queue, ContractError from inside another
  // stream's queue or while holding a serialization domain (both could deadlock).
  void dispatch(FunctionRef<void()> fn);
  // True on the thread currently inside this stream's queue.
  bool isCurrent() const;

  // ---- On the queue only (Note [On the queue]) ----------------------------------------
  CommandBuffer& commandBuffer();
  // The coalescing compute encoder, created on first use after the last end.
  ComputeEncoder& commandEncoder();
  // Exclusive use of the coalescing encoder until the lease is destroyed; ending or
  // committing the encoder meanwhile raises ContractError.
  EncoderLease leaseEncoder();
  void endKernelCoalescing();
  void synchronize(SyncType type);
  void addCompletedHandler(CompletionHandler handler);
  // Cross-stream ordering for data handed between streams: makes this stream wait for the
  // last write (and, for a write, the reads since) of each buffer on other streams, then
  // records these uses. Call before encoding the op, with no lease out.
  void useBuffers(const BufferUse* uses, size_t count);
  // Encodes a GPU wait for `other`'s batch `batch`, getting that batch committed first
  // (Note [Closing a batch on request]). The open batch then depends on it as `scope` says
  // (Note [GPU errors belong to batches]): everything `other` ran up to `batch` by default;
  // useBuffers passes Reader for the exact batch of a tracked write. `other` may be this
  // stream: no GPU wait then (stream order has it), but the dependency is recorded all the same.
  // orderAfter, then inheritFailureOf.
  void waitForStream(Stream& other, uint64_t batch, FailureScope scope = FailureScope::Event);
  // Counts an op encoded without a lease (an MPSGraph or blit encode).
  void noteEncodedOp();
  // The batch the work encoded now will belong to.
  uint64_t openBatch() const {
    return batchState_.load(std::memory_order_acquire) >> 1;
  }

  // ---- Any thread -----------------------------------------------------------------------
  uint64_t submittedBatch() const {
    return (batchState_.load(std::memory_order_acquire) >> 1) - 1;
  }
  uint64_t completedBatch() const {
    return completedBatch_.load(std::memory_order_acquire);
  }
  // Blocks until batch `batch` has completed on the GPU; never touches open state.
  void waitCompleted(uint64_t batch);
  // Whether the stream holds encoded work that no commit has submitted yet.
  bool hasUncommittedWork() const {
    return (batchState_.load(std::memory_order_acquire) & 1) != 0;
  }
  // The batch holding the latest work encoded on this stream: the open batch if it holds
  // work, else the last submitted one (0: none). One load, so never stale (Note [Batch
  // state is one word]); use it instead of combining the three accessors above.
  uint64_t batchOfLatestWork() const {
    const uint64_t state = batchState_.load(std::memory_order_acquire);
    return (state >> 1) - ((state & 1) != 0 ? 0 : 1);
  }
  bool leaseOut() const {
    return leaseOut_.load(std::memory_order_acquire);
  }
  void requestClose(uint64_t batch);
  // Gets every batch up to `batch` committed without touching the open command buffer from
  // outside the queue (Note [Closing a batch on request]): commits it from inside the queue
  // when the queue is free, else waits for the thread inside to serve the request at the end
  // of its dispatch. Blocks until submittedBatch() >= batch. Any thread; from inside another
  // stream's queue, that stream keeps serving its own close requests meanwhile.
  void closeUpTo(uint64_t batch);
  // Note [GPU errors belong to batches]. The failure that reaches a caller depending on
  // batch `batch` as `scope` says (completed: waits for its completion handler first), or
  // nullptr. Any thread, no queue held.
  std::shared_ptr<const std::string> failureOf(uint64_t batch,
                                               FailureScope scope = FailureScope::Reader);
  // Raises CommandBufferError if failureOf(batch, scope) has one; the calling thread then
  // counts as told (acknowledge).
  void raiseIfFailed(uint64_t batch, FailureScope scope = FailureScope::Reader);
  // The calling thread has been told about this stream's failures up to `batch`: once every
  // thread with work in a failed batch was told (or gave the stream back), later batches no
  // longer carry it in stream order (batches that failed or were poisoned keep theirs).
  void acknowledge(uint64_t batch);
  // The calling thread gives the stream back (thread exit, releaseThreadStream): failures of
  // its work it was not told about go to the next device synchronize (takeOrphanedFailures),
  // and no longer to later batches of the stream (Note [GPU errors belong to batches]).
  void giveBack();
  // The failures of batches up to `batch` that a thread with work in them gave the stream
  // back without being told; each is returned once, to the first device synchronize.
  std::vector<std::shared_ptr<const std::string>> takeOrphanedFailures(uint64_t batch);
  // raiseIfFailed(submittedBatch(), Synchronize): what a synchronize of everything submitted
  // raises.
  void rethrowGpuError();
  // Policy hook: with it set, COMMIT_ADAPTIVE commits when it returns true.
  StreamCounters& counters() {
    return counters_;
  }
  const StreamCounters& counters() const {
    return counters_;
  }
  StreamStats stats() const;
  SharedEvent& timeline() {
    return *timeline_;
  }
  CommandQueue& commandQueue() {
    return *queue_;
  }
  SerialExecutor& executor() {
    return *executor_;
  }
  // Owners: threads the thread policy bound this stream to (stream_pool.h).
  std::atomic<int>& owners() {
    return owners_;
  }

 private:
  friend class EncoderLease;
  void requireOnQueue(const char* what) const;
  void requireNoLease(const char* what);
  void commitBatch(bool keepCommandBufferOpen);
  void commitAndWait();
  void serveCloseRequests();
  void serveCloseRequestsUpTo(uint64_t batch);
  void ensureSubmitted(Stream& other, uint64_t batch);
  // The two halves of waitForStream (Note [Overwriting a failed write]: a wait may only
  // order). orderAfter: a GPU wait for `other`'s batch `batch`, unless one is in place, the
  // batch is done or `other` is this stream. inheritFailureOf (after orderAfter of a batch >=
  // `batch`): raises at once if that batch is done and failed as `scope` sees it, else makes it
  // a batch dependency of the open batch with that scope (dependOnOwnBatch for this stream).
  void orderAfter(Stream& other, uint64_t batch);
  void inheritFailureOf(Stream& other, uint64_t batch, FailureScope scope);
  void onBatchCompleted(uint64_t batch, CommandBufferStatus status, const std::string& error);
  void endLease() noexcept;
  void markUncommittedWork() {
    batchState_.fetch_or(1, std::memory_order_acq_rel);
    noteWorkOfThisThread();
  }
  // Records the calling thread as a participant of the open batch (once per batch).
  void noteWorkOfThisThread();
  // The command buffer of the open batch, without counting the caller as a participant (a
  // commit on request encodes nothing of its own).
  CommandBuffer& openCommandBuffer();
  // Under progressMutex_: whether every participant of failed batch `batch` was told or
  // gave the stream back (settled), and whether one was not told on its own thread (live).
  bool settledLocked(uint64_t batch) const;
  bool liveLocked(uint64_t batch) const;
  // Whether a thread with work in both `failed` and `reader` was not told of `failed`.
  bool sharesUntoldLocked(uint64_t failed, uint64_t reader) const;
  // Whether failed batch `failed` reaches a caller of `scope` depending on batch `batch`.
  bool carriesLocked(uint64_t failed, uint64_t batch, FailureScope scope) const;
  void trimParticipantsLocked();
  // waitForStream on this stream itself: the dependency without a GPU wait.
  void dependOnOwnBatch(uint64_t batch, FailureScope scope);

  const StreamContext& context_;
  const int id_;
  const uint64_t serial_; // unique over the process: never reused by a later stream
  std::unique_ptr<CommandQueue> queue_;
  std::unique_ptr<SerialExecutor> executor_;
  std::shared_ptr<SharedEvent> timeline_;

  // On-queue state.
  std::shared_ptr<CommandBuffer> commandBuffer_;
  std::shared_ptr<ComputeEncoder> encoder_;
  std::vector<uint64_t> waitedUpTo_; // per other stream id: highest batch already waited for
  // A dependency of a batch on another batch, as the wait that made it scoped it.
  struct BatchWait {
    Stream* stream;
    uint64_t batch;
    FailureScope scope;
  };
  std::vector<BatchWait> openBatchWaits_; // dependencies of the open batch

  // Any-thread state.
  // Note [Batch state is one word]
  // The open batch and whether it holds work, as openBatch * 2 + hasWork; the submitted batch
  // is always openBatch - 1. Kept in one atomic so a reader never combines the flag of one
  // moment with the number of another: with them in separate atomics, a commit that cleared
  // the flag before publishing the new number let a reader of "the batch of the latest work"
  // get N - 1 while that work was in batch N (issue 8.5), and an allocator on it reuse a
  // buffer batch N still reads. Only the thread inside the queue writes it.
  std::atomic<uint64_t> batchState_{2};
  std::atomic<uint64_t> completedBatch_{0};
  std::atomic<uint64_t> closeRequestedUpTo_{0};
  std::atomic<bool> leaseOut_{false};
  std::atomic<int> owners_{0};
  std::mutex progressMutex_; // guards the waits below and the failure bookkeeping
  std::condition_variable progressCv_;
  // Note [GPU errors belong to batches], under progressMutex_.
  static constexpr size_t kMaxRememberedBatches = 1024;
  // A failed or poisoned batch's error: the message raised, and the root failure it names
  // ("failed batch 5 of stream 2: <kernel message>"), which a dependent's message repeats
  // instead of nesting the whole message (Note [GPU errors belong to batches]).
  struct BatchFailure {
    std::string message;
    std::string root;
  };
  // The message of `failure`, sharing its ownership.
  static std::shared_ptr<const std::string> messageOf(std::shared_ptr<const BatchFailure> failure);
  // failureOf, with the root.
  std::shared_ptr<const BatchFailure> batchFailureOf(uint64_t batch, FailureScope scope);
  std::map<uint64_t, std::shared_ptr<const BatchFailure>> failures_; // failed or poisoned
  std::map<uint64_t, std::vector<BatchWait>> batchWaits_; // unresolved
  // Highest batch any thread was told of or gave the stream back at (written under
  // progressMutex_): what decides for a batch with no recorded participant, and when a
  // stream's own earlier write needs a batch dependency (useBuffers).
  std::atomic<uint64_t> acknowledgedUpTo_{0};
  std::map<uint64_t, std::vector<uint64_t>> participants_; // batch -> threads with work in it
  std::unordered_map<uint64_t, uint64_t> toldUpTo_;        // thread -> told up to batch
  std::unordered_map<uint64_t, uint64_t> gaveBackAt_;      // thread -> gave back after batch
  std::set<uint64_t> orphansDelivered_; // failed batches handed to a device synchronize
  StreamCounters counters_;
};

class EncoderLease {
 public:
  EncoderLease(EncoderLease&& other) noexcept : stream_(other.stream_), encoder_(other.encoder_) {
    other.stream_ = nullptr;
  }
  EncoderLease(const EncoderLease&) = delete;
  EncoderLease& operator=(const EncoderLease&) = delete;
  EncoderLease& operator=(EncoderLease&&) = delete;
  ~EncoderLease() {
    if (stream_ != nullptr) {
      stream_->endLease();
    }
  }
  ComputeEncoder& encoder() const {
    return *encoder_;
  }
  Stream& stream() const {
    return *stream_;
  }

 private:
  friend class Stream;
  EncoderLease(Stream* stream, ComputeEncoder* encoder) : stream_(stream), encoder_(encoder) {}
  Stream* stream_;
  ComputeEncoder* encoder_;
};

} // namespace at::mps::threadsafe
