#include "stream.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "buffer_uses.h"
#include "domains.h"
#include "errors.h"
#include "schedule.h"
#include "test_hooks.h"

namespace at::mps::threadsafe {

std::atomic<const TestHookFn*> test_hooks::gHook{nullptr};
std::atomic<int> test_hooks::gCallsInFlight{0};

namespace {

// The stream whose queue this thread is inside (Note [On the queue]). A plain pointer: it is
// trivially destructible, so it stays valid in thread-exit code.
thread_local Stream* tlsInsideStream = nullptr;

// Marks the calling thread as inside `stream` for the scope, and counts streams inside their
// queue at the same moment (the overlap the threaded tests measure).
class InsideScope {
 public:
  InsideScope(Stream& stream, RuntimeCounters& counters)
      : previous_(tlsInsideStream), counters_(counters) {
    tlsInsideStream = &stream;
    const uint64_t active = counters_.activeStreams.fetch_add(1, std::memory_order_relaxed) + 1;
    raiseToAtLeast(counters_.maxActiveStreams, active);
    if (active > 1) {
      stream.counters().overlappedDispatches.add();
    }
  }
  ~InsideScope() {
    counters_.activeStreams.fetch_sub(1, std::memory_order_relaxed);
    tlsInsideStream = previous_;
  }
  InsideScope(const InsideScope&) = delete;
  InsideScope& operator=(const InsideScope&) = delete;

 private:
  Stream* previous_;
  RuntimeCounters& counters_;
};

// Identifies the calling thread in a batch's participants (Note [GPU errors belong to
// batches]): unique over the process, unlike std::thread::id, which a new thread may reuse.
uint64_t thisThreadToken() {
  static std::atomic<uint64_t> next{1};
  thread_local const uint64_t token = next.fetch_add(1, std::memory_order_relaxed);
  return token;
}

uint64_t nextStreamSerial() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

std::string streamName(int id) {
  return id == 0 ? std::string("default stream") : "stream " + std::to_string(id);
}

} // namespace

Stream::Stream(const StreamContext& context, int id, Device& device)
    : context_(context),
      id_(id),
      serial_(nextStreamSerial()),
      queue_(device.makeCommandQueue("mps " + streamName(id))),
      executor_(device.makeSerialExecutor("metal gpu " + streamName(id))),
      timeline_(device.makeSharedEvent()),
      waitedUpTo_(static_cast<size_t>(context.poolSize) + 1, 0) {}

Stream::~Stream() {
  // A completion handler may still be inside onBatchCompleted (notifying) although a waiter
  // already saw its batch complete; it holds progressMutex_ until it is done with us.
  { std::lock_guard<std::mutex> handlerDone(progressMutex_); }
  // The runtime commits and waits for every stream before destroying it; an encoder can only
  // remain if a test abandoned one, and Metal requires it ended before release.
  if (encoder_) {
    encoder_->endEncoding();
  }
}

bool Stream::isCurrent() const {
  // Also true inside a block that entered the executor directly: PyTorch's documented pattern
  // for custom kernels dispatches onto torch::mps::get_dispatch_queue() with raw dispatch_sync.
  return tlsInsideStream == this || executor_->isCurrent();
}

void Stream::dispatch(FunctionRef<void()> fn) {
  if (tlsInsideStream == this) {
    context_.counters.contractViolations.add();
    throw ReentryError("dispatch_sync onto the queue of " + streamName(id_) +
                       " from inside it would deadlock; run the code directly instead");
  }
  if (tlsInsideStream != nullptr) {
    context_.contractError("dispatch onto " + streamName(id_) + " from inside the queue of " +
                           streamName(tlsInsideStream->id()) +
                           ": nested stream queues can deadlock; leave the first queue before "
                           "entering the second");
  }
  if (DomainGuard::heldByThisThread() > 0) {
    context_.contractError("dispatch onto " + streamName(id_) +
                           " while holding a serialization domain: take domains inside the "
                           "queue, never around it (Note [Domain lock order])");
  }
  counters_.dispatches.add();
  racePoint(SchedulePoint::DispatchEnter);
  auto body = [&] {
    InsideScope inside(*this, context_.counters);
    try {
      fn();
    } catch (...) {
      try {
        serveCloseRequests();
      } catch (...) {
        // The op's own exception is the one to report; a failed commit here resurfaces at the
        // next synchronize of this stream.
      }
      throw;
    }
    racePoint(SchedulePoint::DispatchExit);
    serveCloseRequests();
    if (context_.threadPolicy.choseByStalePolicy(*this) && !leaseOut()) {
      synchronize(SyncType::COMMIT); // Note [Switching the policy]
    }
  };
  if (!context_.protections.load().serialQueue) {
    body(); // the deliberately unsafe mode: no mutual exclusion (protections.h)
    return;
  }
  const uint64_t waitedNs = executor_->dispatchSync(body);
  if (waitedNs > 0) {
    counters_.queueWaits.add();
    counters_.queueWaitNs.add(waitedNs);
  }
}

void Stream::requireOnQueue(const char* what) const {
  if (!isCurrent()) {
    context_.contractError(std::string(what) + " called off the serial queue of " +
                           streamName(id_) +
                           "; wrap the call in dispatch_sync_with_rethrow(stream->queue(), ...)");
  }
}

void Stream::requireNoLease(const char* what) {
  if (leaseOut_.load(std::memory_order_acquire) && context_.protections.load().serialQueue) {
    context_.contractError(std::string(what) + " on " + streamName(id_) +
                           " while its encoder is leased: the lease holder would keep encoding "
                           "into an ended encoder");
  }
}

CommandBuffer& Stream::commandBuffer() {
  requireOnQueue("commandBuffer()");
  // Callers may encode straight into the buffer (MPSGraph does), so it counts as work.
  CommandBuffer& buffer = openCommandBuffer();
  noteWorkOfThisThread();
  return buffer;
}

CommandBuffer& Stream::openCommandBuffer() {
  if (!commandBuffer_) {
    commandBuffer_ = queue_->makeCommandBuffer();
  }
  batchState_.fetch_or(1, std::memory_order_acq_rel);
  return *commandBuffer_;
}

void Stream::noteWorkOfThisThread() {
  // Once per (thread, stream, batch): the common case is one load and two compares.
  thread_local uint64_t lastSerial = 0;
  thread_local uint64_t lastBatch = 0;
  const uint64_t batch = openBatch();
  if (lastSerial == serial_ && lastBatch == batch) {
    return;
  }
  lastSerial = serial_;
  lastBatch = batch;
  const uint64_t me = thisThreadToken();
  {
    std::lock_guard<std::mutex> lock(progressMutex_);
    std::vector<uint64_t>& threads = participants_[batch];
    if (std::find(threads.begin(), threads.end(), me) == threads.end()) {
      threads.push_back(me);
    }
    trimParticipantsLocked();
  }
  context_.threadPolicy.noteThreadWorkedOn(*this);
}

void Stream::trimParticipantsLocked() {
  if (participants_.size() <= kMaxRememberedBatches) {
    return;
  }
  participants_.erase(participants_.begin());
  // Threads whose last news predates every remembered batch can no longer matter.
  const uint64_t oldest = participants_.begin()->first;
  if (toldUpTo_.size() > kMaxRememberedBatches) {
    std::erase_if(toldUpTo_, [&](const auto& entry) { return entry.second < oldest; });
  }
  if (gaveBackAt_.size() > kMaxRememberedBatches) {
    std::erase_if(gaveBackAt_, [&](const auto& entry) { return entry.second < oldest; });
  }
  while (!orphansDelivered_.empty() && *orphansDelivered_.begin() < oldest) {
    orphansDelivered_.erase(orphansDelivered_.begin());
  }
}

bool Stream::settledLocked(uint64_t batch) const {
  auto it = participants_.find(batch);
  if (it == participants_.end() || it->second.empty()) {
    return batch <= acknowledgedUpTo_.load(std::memory_order_relaxed);
  }
  for (uint64_t thread : it->second) {
    auto told = toldUpTo_.find(thread);
    auto gone = gaveBackAt_.find(thread);
    if ((told == toldUpTo_.end() || told->second < batch) &&
        (gone == gaveBackAt_.end() || gone->second < batch)) {
      return false;
    }
  }
  return true;
}

bool Stream::liveLocked(uint64_t batch) const {
  auto it = participants_.find(batch);
  if (it == participants_.end() || it->second.empty()) {
    return batch > acknowledgedUpTo_.load(std::memory_order_relaxed);
  }
  for (uint64_t thread : it->second) {
    auto told = toldUpTo_.find(thread);
    if (told == toldUpTo_.end() || told->second < batch) {
      return true;
    }
  }
  return false;
}

ComputeEncoder& Stream::commandEncoder() {
  requireOnQueue("commandEncoder()");
  if (encoder_) {
    counters_.encodersCoalesced.add();
  } else {
    encoder_ = commandBuffer().makeComputeEncoder();
    counters_.encodersCreated.add();
  }
  markUncommittedWork();
  return *encoder_;
}

EncoderLease Stream::leaseEncoder() {
  requireOnQueue("leaseEncoder()");
  if (leaseOut_.load(std::memory_order_acquire) && context_.protections.load().serialQueue) {
    context_.contractError("leaseEncoder() on " + streamName(id_) +
                           " while its encoder is already leased");
  }
  ComputeEncoder& encoder = commandEncoder();
  leaseOut_.store(true, std::memory_order_release);
  counters_.opsEncoded.add();
  return EncoderLease(this, &encoder);
}

void Stream::endLease() noexcept {
  leaseOut_.store(false, std::memory_order_release);
}

void Stream::noteEncodedOp() {
  requireOnQueue("noteEncodedOp()");
  counters_.opsEncoded.add();
  markUncommittedWork();
}

void Stream::endKernelCoalescing() {
  requireOnQueue("endKernelCoalescing()");
  requireNoLease("endKernelCoalescing()");
  if (encoder_) {
    encoder_->endEncoding();
    encoder_.reset();
  }
}

void Stream::synchronize(SyncType type) {
  requireOnQueue("synchronize()");
  requireNoLease("synchronize()");
  counters_.commits[static_cast<int>(type)].add();
  endKernelCoalescing();
  switch (type) {
    case SyncType::NONE:
      break;
    case SyncType::COMMIT:
      commitBatch(context_.commitPolicy.commitAndContinue());
      break;
    case SyncType::COMMIT_ADAPTIVE:
      if (context_.commitPolicy.underMemoryPressure()) {
        commitBatch(context_.commitPolicy.commitAndContinue());
      }
      break;
    case SyncType::COMMIT_AND_WAIT:
      commitAndWait();
      break;
    case SyncType::COMMIT_AND_CONTINUE:
      commitBatch(/*keepCommandBufferOpen=*/true);
      break;
  }
}

// Commits the open batch (Note [Batches and the timeline]). With keepCommandBufferOpen the
// MPSCommandBuffer stays (commitAndContinue) and an empty batch is not committed; without it
// the buffer is committed even when empty, since it has to be released.
void Stream::commitBatch(bool keepCommandBufferOpen) {
  if (!commandBuffer_) {
    return;
  }
  if (keepCommandBufferOpen && !hasUncommittedWork()) {
    return;
  }
  const uint64_t batch = openBatch();
  if (!openBatchWaits_.empty()) {
    std::lock_guard<std::mutex> lock(progressMutex_);
    batchWaits_[batch] = std::move(openBatchWaits_);
    if (batchWaits_.size() > kMaxRememberedBatches) {
      batchWaits_.erase(batchWaits_.begin());
    }
  }
  openBatchWaits_.clear();
  CommandBuffer& buffer = *commandBuffer_;
  racePoint(SchedulePoint::CommitSignal);
  buffer.encodeSignalEvent(*timeline_, batch);
  buffer.addCompletedHandler([this, batch](CommandBufferStatus status, const std::string& error) {
    onBatchCompleted(batch, status, error);
  });
  if (keepCommandBufferOpen) {
    buffer.commitAndContinue();
  } else {
    buffer.commit();
    commandBuffer_.reset();
  }
  racePoint(SchedulePoint::CommitSubmitted);
  counters_.commandBuffersSubmitted.add();
  testHook(TestHook::CommitBeforePublish, this);
  racePoint(SchedulePoint::CommitPublish);
  {
    // Notify under the lock: a woken waiter may go on to destroy the runtime, and with it
    // this condition variable. One store publishes "batch submitted, next one open and
    // empty" (Note [Batch state is one word]).
    std::lock_guard<std::mutex> lock(progressMutex_);
    batchState_.store((batch + 1) << 1, std::memory_order_release);
    progressCv_.notify_all();
  }
}

void Stream::commitAndWait() {
  commitBatch(/*keepCommandBufferOpen=*/false);
  const uint64_t batch = submittedBatch();
  waitCompleted(batch);
  // The caller is this stream's owner, inside its queue: once told, later batches are clean.
  auto failure = failureOf(batch, FailureScope::Synchronize);
  if (failure) {
    acknowledge(batch);
    racePoint(SchedulePoint::ErrorDelivery);
    throw CommandBufferError(*failure);
  }
}

void Stream::onBatchCompleted(uint64_t batch, CommandBufferStatus status, const std::string& error) {
  testHook(TestHook::BatchCompleted, this);
  racePoint(SchedulePoint::CompletionHandler);
  {
    std::lock_guard<std::mutex> lock(progressMutex_);
    if (status == CommandBufferStatus::Error) {
      counters_.gpuErrors.add();
      const std::string origin = "batch " + std::to_string(batch) + " of " + streamName(id_);
      // Metal skips the rest of a failed command buffer: say so, since on a shared stream the
      // reader may be a thread whose own kernels were skipped (Note [GPU errors belong to
      // batches]).
      failures_[batch] = std::make_shared<const BatchFailure>(BatchFailure{
          "command buffer (" + origin + ") failed on the GPU: " + error +
              " [the GPU skipped the rest of this batch: every later kernel encoded in it, by "
              "any thread using " + streamName(id_) + ", did not run]",
          "failed " + origin + ": " + error});
      if (failures_.size() > kMaxRememberedBatches) {
        failures_.erase(failures_.begin());
      }
    }
    if (completedBatch_.load(std::memory_order_relaxed) < batch) {
      completedBatch_.store(batch, std::memory_order_release);
    }
    progressCv_.notify_all(); // under the lock: see commitBatch
  }
}

bool Stream::sharesUntoldLocked(uint64_t failed, uint64_t reader) const {
  auto failedThreads = participants_.find(failed);
  auto readerThreads = participants_.find(reader);
  if (failedThreads == participants_.end() || readerThreads == participants_.end()) {
    return false;
  }
  for (uint64_t thread : readerThreads->second) {
    if (std::find(failedThreads->second.begin(), failedThreads->second.end(), thread) ==
        failedThreads->second.end()) {
      continue;
    }
    auto told = toldUpTo_.find(thread);
    if (told == toldUpTo_.end() || told->second < failed) {
      return true;
    }
  }
  return false;
}

bool Stream::carriesLocked(uint64_t failed, uint64_t batch, FailureScope scope) const {
  switch (scope) {
    case FailureScope::Reader:
      return failed == batch || sharesUntoldLocked(failed, batch);
    case FailureScope::Event:
      return failed == batch || liveLocked(failed);
    case FailureScope::Synchronize: {
      // At most once to each thread (Note [GPU errors belong to batches]: "told" is per
      // thread): a participant that is never told (an autograd engine worker, a thread that
      // idles) would otherwise make every synchronize of every thread raise it again.
      auto told = toldUpTo_.find(thisThreadToken());
      return !settledLocked(failed) && (told == toldUpTo_.end() || told->second < failed);
    }
  }
  return true;
}

std::shared_ptr<const std::string> Stream::messageOf(std::shared_ptr<const BatchFailure> failure) {
  if (!failure) {
    return nullptr;
  }
  const std::string* message = &failure->message;
  return std::shared_ptr<const std::string>(std::move(failure), message);
}

std::shared_ptr<const std::string> Stream::failureOf(uint64_t batch, FailureScope scope) {
  return messageOf(batchFailureOf(batch, scope));
}

std::shared_ptr<const Stream::BatchFailure> Stream::batchFailureOf(uint64_t batch,
                                                                   FailureScope scope) {
  if (batch == 0) {
    return nullptr;
  }
  waitCompleted(batch);
  std::vector<std::pair<uint64_t, std::vector<BatchWait>>> unresolved;
  {
    std::lock_guard<std::mutex> lock(progressMutex_);
    // The exact batch (a dependent of it), then stream order: an earlier failure still
    // carried (Note [GPU errors belong to batches]).
    for (auto it = failures_.begin(); it != failures_.end() && it->first <= batch; ++it) {
      if (carriesLocked(it->first, batch, scope)) {
        return it->second;
      }
    }
    for (auto it = batchWaits_.begin(); it != batchWaits_.end() && it->first <= batch; ++it) {
      unresolved.emplace_back(it->first, it->second);
    }
  }
  // Cross-stream: resolve the GPU waits of those batches, oldest first, with no lock held
  // (the waited-for stream may have to wait for its own handlers).
  for (auto& [waiter, waits] : unresolved) {
    std::shared_ptr<const BatchFailure> cause;
    for (const BatchWait& wait : waits) {
      if (auto failure = wait.stream->batchFailureOf(wait.batch, wait.scope)) {
        // The root only: a chain of dependents never nests their messages.
        cause = std::make_shared<const BatchFailure>(BatchFailure{
            "batch " + std::to_string(waiter) + " of " + streamName(id_) + " depends on " +
                failure->root,
            failure->root});
        break;
      }
    }
    std::lock_guard<std::mutex> lock(progressMutex_);
    batchWaits_.erase(waiter);
    if (cause) {
      auto [it, inserted] = failures_.emplace(waiter, cause);
      if (failures_.size() > kMaxRememberedBatches) {
        failures_.erase(failures_.begin());
      }
      if (carriesLocked(waiter, batch, scope)) {
        return it->second;
      }
    }
  }
  return nullptr;
}

void Stream::raiseIfFailed(uint64_t batch, FailureScope scope) {
  if (auto failure = failureOf(batch, scope)) {
    acknowledge(batch); // it reached this thread
    racePoint(SchedulePoint::ErrorDelivery);
    throw CommandBufferError(*failure);
  }
}

void Stream::acknowledge(uint64_t batch) {
  const uint64_t me = thisThreadToken();
  std::lock_guard<std::mutex> lock(progressMutex_);
  uint64_t& told = toldUpTo_[me];
  told = std::max(told, batch);
  raiseToAtLeast(acknowledgedUpTo_, batch);
}

void Stream::giveBack() {
  const uint64_t me = thisThreadToken();
  const uint64_t batch = batchOfLatestWork();
  std::lock_guard<std::mutex> lock(progressMutex_);
  uint64_t& gone = gaveBackAt_[me];
  gone = std::max(gone, batch);
  raiseToAtLeast(acknowledgedUpTo_, batch);
}

std::vector<std::shared_ptr<const std::string>> Stream::takeOrphanedFailures(uint64_t batch) {
  std::vector<std::shared_ptr<const std::string>> orphaned;
  std::lock_guard<std::mutex> lock(progressMutex_);
  for (auto it = failures_.begin(); it != failures_.end() && it->first <= batch; ++it) {
    auto threads = participants_.find(it->first);
    if (threads == participants_.end() || orphansDelivered_.count(it->first) != 0) {
      continue;
    }
    const bool leftUntold = std::any_of(threads->second.begin(), threads->second.end(),
                                        [&](uint64_t thread) {
      auto told = toldUpTo_.find(thread);
      auto gone = gaveBackAt_.find(thread);
      return gone != gaveBackAt_.end() && gone->second >= it->first &&
             (told == toldUpTo_.end() || told->second < it->first);
    });
    if (leftUntold) {
      orphansDelivered_.insert(it->first);
      orphaned.push_back(messageOf(it->second));
    }
  }
  return orphaned;
}

void Stream::waitCompleted(uint64_t batch) {
  if (completedBatch() >= batch) {
    return;
  }
  if (batch > submittedBatch()) {
    context_.contractError("waiting for batch " + std::to_string(batch) + " of " +
                           streamName(id_) + ", which has not been committed: it would never "
                           "complete");
  }
  std::unique_lock<std::mutex> lock(progressMutex_);
  progressCv_.wait(lock, [&] { return completedBatch() >= batch; });
}

void Stream::rethrowGpuError() {
  raiseIfFailed(submittedBatch(), FailureScope::Synchronize);
}

void Stream::addCompletedHandler(CompletionHandler handler) {
  requireOnQueue("addCompletedHandler()");
  commandBuffer().addCompletedHandler(std::move(handler));
}

void Stream::useBuffers(const BufferUse* uses, size_t count) {
  requireOnQueue("useBuffers()");
  const Protections protections = context_.protections.load();
  // Ordering relies on the queue: without it there is nothing to order against.
  if (!protections.crossStreamOrder || !protections.serialQueue) {
    return;
  }
  // Note [Unordered writes are a set]: read what we depend on and record our uses in one
  // step per buffer, wait with no lock held, then settle our uses on the batch they are
  // really encoded in (serving a close request during the waits may have moved it on).
  thread_local std::vector<StreamUse> dependencies;
  dependencies.clear();
  thread_local std::vector<StreamUse> ownWrites;
  ownWrites.clear();
  thread_local std::vector<StreamUse> inherited;
  inherited.clear();
  thread_local std::vector<uint64_t> previous;
  const uint64_t recordedIn = openBatch();
  context_.bufferUses.dependOnAndRecord(*this, uses, count, recordedIn, dependencies,
                                        &ownWrites, &previous, &inherited);
  testHook(TestHook::BufferUsesBeforeWaits, this);
  racePoint(SchedulePoint::BufferDependencies);
  const uint64_t waitsIn = openBatch();
  const size_t waitsBefore = openBatchWaits_.size();
  try {
    for (const StreamUse& dependency : dependencies) {
      orderAfter(*dependency.stream, dependency.batch);
    }
    // Only some of the waits carry a failure (Note [Overwriting a failed write]), each the
    // failure of the exact batch it read from, not of the latest batch waited for: that one
    // may be clean while an earlier one this op reads from failed.
    for (const StreamUse& carrier : inherited) {
      inheritFailureOf(*carrier.stream, carrier.batch, FailureScope::Reader);
    }
  } catch (...) {
    // The op is abandoned before it was encoded (a failed dependency, a broken contract): take
    // back the uses recorded for it, or a free of these buffers would wait for a batch nothing
    // may ever commit. A stream that already read them as a dependency gets our batch closed
    // on request, empty or not (Note [Closing a batch on request]).
    context_.bufferUses.undoRecord(*this, uses, count, recordedIn, previous);
    // Nor a failure dependency: the failures it inherited belong to no work in our batch. (Its
    // GPU waits stay encoded: they only order.) A batch the waits committed keeps its own.
    if (openBatch() == waitsIn) {
      openBatchWaits_.resize(std::min(openBatchWaits_.size(), waitsBefore));
    } else {
      openBatchWaits_.clear();
    }
    throw;
  }
  // Our own earlier writes are ordered by our queue; but one from a batch whose failure was
  // already acknowledged (told to a previous owner of this stream) no longer reaches us in
  // stream order, so it is a batch dependency of its own (Note [GPU errors belong to batches]).
  // Added after the waits: an op abandoned by a wait leaves no dependency behind.
  const uint64_t acknowledged = acknowledgedUpTo_.load(std::memory_order_acquire);
  for (const StreamUse& write : ownWrites) {
    if (write.batch <= acknowledged) {
      openBatchWaits_.push_back({this, write.batch, FailureScope::Reader});
    }
  }
  racePoint(SchedulePoint::BufferRecord);
  context_.bufferUses.settle(*this, uses, count, openBatch(), dependencies);
}

void Stream::waitForStream(Stream& other, uint64_t batch, FailureScope scope) {
  orderAfter(other, batch);
  inheritFailureOf(other, batch, scope);
}

void Stream::inheritFailureOf(Stream& other, uint64_t batch, FailureScope scope) {
  if (batch == 0) {
    return;
  }
  if (&other == this) {
    dependOnOwnBatch(batch, scope);
    return;
  }
  // Even when an earlier wait already orders us after it: that wait's batch may have been
  // raised and settled already, and this op reads the lost data again.
  if (other.completedBatch() >= batch) {
    // What we were about to encode would read its garbage (Note [GPU errors belong to
    // batches]).
    other.raiseIfFailed(batch, scope);
    return;
  }
  const BatchWait wait{&other, batch, scope};
  const bool known = std::any_of(openBatchWaits_.begin(), openBatchWaits_.end(), [&](const BatchWait& w) {
    return w.stream == wait.stream && w.batch == wait.batch && w.scope == wait.scope;
  });
  if (!known) {
    openBatchWaits_.push_back(wait); // submitted: orderAfter saw to it
  }
}

void Stream::orderAfter(Stream& other, uint64_t batch) {
  requireOnQueue("waitForStream()");
  if (batch == 0 || &other == this) {
    return; // stream order (inheritFailureOf records the dependency on our own batch)
  }
  // Waiting for another stream may mean committing our own batch for it (Note [Closing a
  // batch on request]): impossible with our encoder leased, a deadlock with a domain held.
  requireNoLease("waitForStream()");
  if (DomainGuard::heldByThisThread() > 0) {
    context_.contractError("waiting for another stream while holding a serialization domain "
                           "(Note [Domain lock order])");
  }
  if (&other.context_ != &context_) {
    throw InvalidArgument("waitForStream(): " + streamName(other.id()) +
                          " belongs to another device");
  }
  uint64_t& waited = waitedUpTo_[static_cast<size_t>(other.id())];
  if (waited < batch && other.completedBatch() < batch) {
    if (other.submittedBatch() < batch) {
      ensureSubmitted(other, batch);
    }
    endKernelCoalescing(); // Metal: no encoder may be open while an event wait is encoded
    commandBuffer().encodeWaitForEvent(other.timeline(), batch);
    counters_.crossStreamWaits.add();
  }
  // Else ordered already: an earlier wait of this stream (GPU waits block later work too), or
  // the batch is done.
  waited = std::max(waited, batch);
}

// Note [GPU errors belong to batches]: a wait for our own batch N. Stream order already puts N
// before what we encode next; what it does not give is N's failure once stream order no
// longer carries it (its threads were told or gave the stream back: a pool stream's next owner).
void Stream::dependOnOwnBatch(uint64_t batch, FailureScope scope) {
  // The open batch's own work is ordered by encoding, and its failure is its own: only
  // submitted batches are dependencies (and resolving a batch never recurses into itself).
  batch = std::min(batch, submittedBatch());
  if (batch == 0) {
    return;
  }
  if (completedBatch() >= batch) {
    raiseIfFailed(batch, scope);
    return;
  }
  openBatchWaits_.push_back({this, batch, scope});
}

// Note [Closing a batch on request].
void Stream::ensureSubmitted(Stream& other, uint64_t batch) {
  other.closeUpTo(batch);
}

void Stream::closeUpTo(uint64_t batch) {
  if (submittedBatch() >= batch) {
    return;
  }
  if (isCurrent()) {
    serveCloseRequestsUpTo(batch);
    return;
  }
  // The stream whose queue the caller is in (if any) keeps serving its own close requests
  // while it waits, so two streams waiting for each other both make progress.
  Stream* inside = tlsInsideStream;
  requestClose(batch);
  while (submittedBatch() < batch) {
    racePoint(SchedulePoint::EnsureSubmitted);
    const bool served = executor().tryDispatchSync([&] {
      InsideScope scope(*this, context_.counters);
      serveCloseRequests();
    });
    if (served) {
      continue;
    }
    if (inside != nullptr) {
      inside->serveCloseRequests();
    }
    std::unique_lock<std::mutex> lock(progressMutex_);
    progressCv_.wait_for(lock, std::chrono::microseconds(200),
                         [&] { return submittedBatch() >= batch; });
  }
}

void Stream::serveCloseRequestsUpTo(uint64_t batch) {
  requestClose(batch);
  serveCloseRequests();
}

void Stream::requestClose(uint64_t batch) {
  racePoint(SchedulePoint::CloseRequest);
  raiseToAtLeast(closeRequestedUpTo_, batch);
}

void Stream::serveCloseRequests() {
  racePoint(SchedulePoint::CloseRequest);
  if (closeRequestedUpTo_.load(std::memory_order_acquire) < openBatch() ||
      leaseOut_.load(std::memory_order_acquire)) {
    return;
  }
  endKernelCoalescing();
  // An op that failed before encoding leaves the batch empty: still close it. The thread
  // serving the request encodes nothing, so it is no participant of the batch.
  openCommandBuffer();
  commitBatch(context_.commitPolicy.commitAndContinue());
  counters_.closeRequestsServed.add();
}

StreamStats Stream::stats() const {
  StreamStats s;
  s.id = id_;
  s.dispatches = counters_.dispatches.get();
  s.queueWaits = counters_.queueWaits.get();
  s.queueWaitNs = counters_.queueWaitNs.get();
  s.opsEncoded = counters_.opsEncoded.get();
  s.encodersCreated = counters_.encodersCreated.get();
  s.encodersCoalesced = counters_.encodersCoalesced.get();
  for (int i = 0; i < kSyncTypeCount; ++i) {
    s.commits[i] = counters_.commits[i].get();
  }
  s.commandBuffersSubmitted = counters_.commandBuffersSubmitted.get();
  s.crossStreamWaits = counters_.crossStreamWaits.get();
  s.closeRequestsServed = counters_.closeRequestsServed.get();
  s.gpuErrors = counters_.gpuErrors.get();
  s.threadsBound = counters_.threadsBound.get();
  s.overlappedDispatches = counters_.overlappedDispatches.get();
  s.submittedBatch = submittedBatch();
  s.completedBatch = completedBatch();
  s.owners = owners_.load(std::memory_order_relaxed);
  return s;
}

} // namespace at::mps::threadsafe
