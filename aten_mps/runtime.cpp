#include "runtime.h"

#include <pthread.h>

#include <algorithm>
#include <string>

#include "errors.h"
#include "events.h"
#include "schedule.h"
#include "test_hooks.h"

namespace at::mps::threadsafe {

namespace {

std::atomic<uint64_t> nextRuntimeSerial{1};

// Note [Abandoned after fork]: set in the child of a fork() taken after a runtime was created.
std::atomic<bool> forkedChild{false};

void markForkedChild() {
  forkedChild.store(true, std::memory_order_relaxed); // an atomic store: safe in the child
}

void registerForkHandler() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, &markForkedChild); });
}

// What one thread holds of one runtime: its explicit stream (a stream guard) and the pool
// stream the thread policy bound it to (Note [Thread policy]).
struct ThreadBinding {
  uint64_t serial = 0;
  std::shared_ptr<Runtime::Life> life;
  Stream* explicitStream = nullptr;
  Stream* bound = nullptr;
  // The stream the thread policy last chose for this thread, and the policy epoch it read
  // (Note [Switching the policy]).
  Stream* policyStream = nullptr;
  uint64_t policyEpoch = 0;
  // Every stream the thread encoded work on (at most the pool and the default stream): it
  // gives them all back when it exits, bound or not (Note [GPU errors belong to batches]).
  std::vector<Stream*> workedOn;
};

// True once this thread's bindings are destroyed (trivially destructible: valid in exit code).
thread_local bool tlsBindingsGone = false;

// Gives the bound streams back when the thread exits.
struct ThreadBindings {
  std::vector<ThreadBinding> list;

  ThreadBindings() = default;
  ThreadBindings(const ThreadBindings&) = delete;
  ThreadBindings& operator=(const ThreadBindings&) = delete;

  ~ThreadBindings() {
    tlsBindingsGone = true;
    if (abandonedAfterFork()) {
      return; // a forked child: the parent's streams and locks are not ours to touch
    }
    for (ThreadBinding& binding : list) {
      if (binding.bound == nullptr && binding.workedOn.empty()) {
        continue;
      }
      if (binding.bound != nullptr) {
        testHook(TestHook::ThreadUnbind, binding.bound);
      }
      std::lock_guard<std::mutex> lock(binding.life->mutex);
      if (binding.life->runtime == nullptr) {
        continue;
      }
      if (binding.bound != nullptr) {
        binding.life->runtime->unbind(*binding.bound);
      }
      // Streams it used without owning them (the default stream with thread safety off, an
      // explicit stream): the failures of its work there were told to nobody else either.
      for (Stream* stream : binding.workedOn) {
        if (stream != binding.bound) {
          stream->giveBack();
        }
      }
    }
  }

  ThreadBinding& of(uint64_t serial, const std::shared_ptr<Runtime::Life>& life) {
    for (ThreadBinding& binding : list) {
      if (binding.serial == serial) {
        return binding;
      }
    }
    // Forget runtimes that are gone before remembering a new one. try_lock: this may run
    // inside a stream's queue, and an exiting thread holds a Life mutex while it enters one.
    list.erase(std::remove_if(list.begin(), list.end(),
                              [](ThreadBinding& binding) {
                                std::unique_lock<std::mutex> lock(binding.life->mutex,
                                                                  std::try_to_lock);
                                return lock.owns_lock() && binding.life->runtime == nullptr;
                              }),
               list.end());
    list.push_back({serial, life, nullptr, nullptr, nullptr, 0, {}});
    return list.back();
  }
};

thread_local ThreadBindings tlsBindings;

} // namespace

bool abandonedAfterFork() noexcept {
  return forkedChild.load(std::memory_order_relaxed);
}

Runtime::Runtime(std::unique_ptr<Device> device, RuntimeOptions options)
    : device_(std::move(device)),
      poolSize_(options.poolSize),
      commitPolicy_(options.commitAndContinue),
      threadsafe_(options.threadsafe),
      protections_(options.protections),
      serial_(nextRuntimeSerial.fetch_add(1)),
      life_(std::make_shared<Life>()),
      streams_(static_cast<size_t>(std::max(options.poolSize, 0)) + 1),
      streamContext_{counters_, protections_, commitPolicy_, bufferUses_, *this, options.poolSize} {
  if (!device_) {
    throw InvalidArgument("Runtime needs a device");
  }
  if (options.poolSize < 1) {
    throw InvalidArgument("Runtime pool size must be at least 1, got " +
                          std::to_string(options.poolSize));
  }
  life_->runtime = this;
  registerForkHandler(); // Note [Abandoned after fork]
}

Runtime::~Runtime() {
  if (abandonedAfterFork()) {
    return; // leaked: its streams and locks are the parent's (Note [Abandoned after fork])
  }
  {
    std::lock_guard<std::mutex> lock(life_->mutex);
    life_->runtime = nullptr; // threads exiting from now on give nothing back
  }
  const std::vector<Stream*> streams = createdStreams();
  for (Stream* stream : streams) {
    try {
      runOnQueue(*stream, [&] { stream->synchronize(SyncType::COMMIT); });
    } catch (const std::exception&) {
      // A broken contract at teardown (a test that left a lease out): nothing to report to.
    }
    stream->waitCompleted(stream->submittedBatch());
  }
  for (auto& slot : streams_) {
    delete slot.exchange(nullptr);
  }
}

// ---- Streams ------------------------------------------------------------------------------

Stream& Runtime::createStream(int id) {
  Stream* existing = streams_[static_cast<size_t>(id)].load(std::memory_order_acquire);
  if (existing != nullptr) {
    return *existing;
  }
  auto* created = new Stream(streamContext_, id, *device_);
  streams_[static_cast<size_t>(id)].store(created, std::memory_order_release);
  return *created;
}

Stream& Runtime::stream(int id) {
  if (id < 0 || id > poolSize_) {
    throw InvalidArgument("no MPS stream with id " + std::to_string(id) + " (valid: 0.." +
                          std::to_string(poolSize_) + ")");
  }
  Stream* existing = streams_[static_cast<size_t>(id)].load(std::memory_order_acquire);
  if (existing != nullptr) {
    return *existing;
  }
  std::lock_guard<std::mutex> lock(streamsMutex_);
  return createStream(id);
}

Stream& Runtime::defaultStream() {
  return stream(0);
}

Stream& Runtime::streamFromPool() {
  const uint32_t next = roundRobin_.fetch_add(1, std::memory_order_relaxed);
  return stream(1 + static_cast<int>(next % static_cast<uint32_t>(poolSize_)));
}

bool Runtime::owns(const Stream& stream) const {
  const int id = stream.id();
  return id >= 0 && id <= poolSize_ &&
         streams_[static_cast<size_t>(id)].load(std::memory_order_acquire) == &stream;
}

std::vector<Stream*> Runtime::createdStreams() const {
  std::vector<Stream*> result;
  for (const auto& slot : streams_) {
    if (Stream* stream = slot.load(std::memory_order_acquire)) {
      result.push_back(stream);
    }
  }
  return result;
}

// ---- Thread policy ------------------------------------------------------------------------

Stream& Runtime::currentStream() {
  ThreadBinding& binding = tlsBindings.of(serial_, life_);
  if (binding.explicitStream != nullptr) {
    return *binding.explicitStream;
  }
  // The epoch first: a policy read older than the epoch is seen as stale (Note [Switching the
  // policy]).
  binding.policyEpoch = policyEpoch_.load(std::memory_order_seq_cst);
  const bool on = threadsafe_.load(std::memory_order_seq_cst);
  testHook(TestHook::PolicyRead);
  racePoint(SchedulePoint::PolicyRead);
  if (!on) {
    binding.policyStream = &defaultStream();
    return *binding.policyStream;
  }
  if (binding.bound != nullptr) {
    binding.policyStream = binding.bound;
    return *binding.bound;
  }
  // Bind: the unbound pool stream with the lowest id, else the least-bound one.
  std::lock_guard<std::mutex> lock(streamsMutex_);
  int best = 1;
  int bestOwners = -1;
  for (int id = 1; id <= poolSize_; ++id) {
    Stream* candidate = streams_[static_cast<size_t>(id)].load(std::memory_order_acquire);
    const int owners = candidate ? candidate->owners().load(std::memory_order_relaxed) : 0;
    if (bestOwners < 0 || owners < bestOwners) {
      best = id;
      bestOwners = owners;
      if (owners == 0) {
        break;
      }
    }
  }
  Stream& chosen = createStream(best);
  if (bestOwners > 0) {
    counters_.sharedStreamBindings.add();
  }
  chosen.owners().fetch_add(1, std::memory_order_relaxed);
  chosen.counters().threadsBound.add();
  counters_.threadsBound.add();
  binding.bound = &chosen;
  binding.policyStream = &chosen;
  return chosen;
}

Stream* Runtime::currentStreamIfAny() {
  ThreadBinding& binding = tlsBindings.of(serial_, life_);
  if (binding.explicitStream != nullptr) {
    return binding.explicitStream;
  }
  return threadsafe() ? binding.bound : &defaultStream();
}

void Runtime::setCurrentStream(Stream* stream) {
  if (stream != nullptr && !owns(*stream)) {
    throw InvalidArgument("setCurrentStream(): stream " + std::to_string(stream->id()) +
                          " belongs to another MPS device");
  }
  tlsBindings.of(serial_, life_).explicitStream = stream;
}

Stream* Runtime::explicitStream() const {
  return tlsBindings.of(serial_, life_).explicitStream;
}

void Runtime::noteThreadWorkedOn(Stream& stream) {
  if (tlsBindingsGone) {
    return; // the thread is exiting: its bindings are gone
  }
  std::vector<Stream*>& workedOn = tlsBindings.of(serial_, life_).workedOn;
  if (std::find(workedOn.begin(), workedOn.end(), &stream) == workedOn.end()) {
    workedOn.push_back(&stream);
  }
}

void Runtime::releaseThreadStream() {
  if (abandonedAfterFork()) {
    return; // Note [Abandoned after fork]
  }
  ThreadBinding& binding = tlsBindings.of(serial_, life_);
  if (binding.bound != nullptr) {
    Stream* stream = binding.bound;
    binding.bound = nullptr;
    unbind(*stream);
  }
}

void Runtime::unbind(Stream& stream) noexcept {
  if (abandonedAfterFork()) {
    return; // Note [Abandoned after fork]
  }
  racePoint(SchedulePoint::ThreadUnbind);
  try {
    // The thread's open batch is committed, never dropped; a GPU error in it is reported by
    // the next synchronize that covers this stream.
    runOnQueue(stream, [&] { stream.synchronize(SyncType::COMMIT); });
  } catch (const std::exception&) {
    // Counted by contractError where it was raised; an exiting thread has no caller to tell.
  }
  // The next owner of a pool stream starts clean: this thread's failures stay with their
  // batches, for whoever depends on them, and those it was not told about go to the next
  // device synchronize (Note [GPU errors belong to batches]).
  stream.giveBack();
  std::lock_guard<std::mutex> lock(streamsMutex_);
  stream.owners().fetch_sub(1, std::memory_order_relaxed);
  counters_.threadsReleased.add();
}

bool Runtime::choseByStalePolicy(const Stream& stream) const {
  const ThreadBinding& binding = tlsBindings.of(serial_, life_);
  if (binding.explicitStream != nullptr || binding.policyStream != &stream) {
    return false;
  }
  const uint64_t epoch = policyEpoch_.load(std::memory_order_seq_cst);
  return binding.policyEpoch != epoch || (epoch & 1) != 0;
}

void Runtime::setThreadsafe(bool on) {
  std::lock_guard<std::mutex> policy(policyMutex_);
  if (on == threadsafe()) {
    return;
  }
  // Odd while switching, even again when done or refused: a stream chosen before or during
  // the switch is committed by its thread at the end of its dispatch (Stream::dispatch).
  policyEpoch_.fetch_add(1, std::memory_order_seq_cst);
  struct EndSwitch {
    std::atomic<uint64_t>& epoch;
    ~EndSwitch() {
      epoch.fetch_add(1, std::memory_order_seq_cst);
    }
  } endSwitch{policyEpoch_};
  Stream& mine = currentStream();
  for (Stream* stream : createdStreams()) {
    // The caller's own stream is drained below, unless another thread holds its encoder
    // (threadsafe off: everyone shares the default stream); that thread's op is in flight.
    const bool othersLease = stream->leaseOut() && !stream->isCurrent();
    if (stream == &mine ? othersLease : (othersLease || stream->hasUncommittedWork())) {
      throw WorkInFlightError(
          std::string("cannot switch thread safety ") + (on ? "on" : "off") +
          ": stream " + std::to_string(stream->id()) +
          " holds encoded work that is not committed (another thread's, or left on a stream this "
          "thread no longer uses); synchronize that stream first");
    }
  }
  runOnQueue(mine, [&] { mine.synchronize(SyncType::COMMIT); });
  for (Stream* stream : createdStreams()) {
    stream->waitCompleted(stream->submittedBatch());
  }
  racePoint(SchedulePoint::SetThreadsafe);
  threadsafe_.store(on, std::memory_order_seq_cst);
}

// ---- Protections --------------------------------------------------------------------------

Protections Runtime::protections() const {
  return protections_.load();
}

void Runtime::setProtections(Protections protections) {
  protections_.store(protections);
}

// ---- Device-wide synchronize --------------------------------------------------------------

void Runtime::synchronizeDevice() {
  counters_.deviceSynchronizes.add();
  // Commit the work this thread encoded, on the stream it encoded it on; a thread that has no
  // stream yet has nothing to commit, and is not bound to one just to synchronize.
  Stream* mine = currentStreamIfAny();
  if (mine != nullptr) {
    runOnQueue(*mine, [&] { mine->synchronize(SyncType::COMMIT); });
  }
  racePoint(SchedulePoint::DeviceSynchronize);
  const std::vector<Stream*> streams = createdStreams();
  // Work other threads encoded and left in an open batch counts too: a thread that returned
  // from Python's join() may not have given its stream back yet (Note [Device-wide
  // synchronize]). Closed on request, never by touching their encoder from here.
  std::vector<uint64_t> upTo(streams.size());
  for (size_t i = 0; i < streams.size(); ++i) {
    upTo[i] = streams[i]->batchOfLatestWork();
    streams[i]->closeUpTo(upTo[i]);
  }
  for (size_t i = 0; i < streams.size(); ++i) {
    streams[i]->waitCompleted(upTo[i]);
  }
  // Everything was waited for, so every failure not yet settled is raised, and every failure
  // a thread left behind untold, once (Note [GPU errors belong to batches]). The caller has
  // been told of what it receives.
  std::vector<std::shared_ptr<const std::string>> failures;
  auto addOnce = [&](const std::shared_ptr<const std::string>& failure) {
    if (failure && std::find(failures.begin(), failures.end(), failure) == failures.end()) {
      failures.push_back(failure);
    }
  };
  for (size_t i = 0; i < streams.size(); ++i) {
    const size_t before = failures.size();
    addOnce(streams[i]->failureOf(upTo[i], FailureScope::Synchronize));
    for (const auto& orphaned : streams[i]->takeOrphanedFailures(upTo[i])) {
      addOnce(orphaned);
    }
    if (failures.size() > before) {
      streams[i]->acknowledge(upTo[i]);
    }
  }
  if (!failures.empty()) {
    std::string message = *failures.front();
    if (failures.size() > 1) {
      message += " (and " + std::to_string(failures.size() - 1) + " more failed batches:";
      for (size_t i = 1; i < failures.size(); ++i) {
        message += " [" + *failures[i] + "]";
      }
      message += ")";
    }
    racePoint(SchedulePoint::ErrorDelivery);
    throw CommandBufferError(message);
  }
}

// ---- Diagnostics --------------------------------------------------------------------------

void Runtime::contractError(const std::string& message) {
  streamContext_.contractError(message);
}

RuntimeStats Runtime::stats() const {
  RuntimeStats s;
  s.threadsafe = threadsafe();
  s.contractViolations = counters_.contractViolations.get();
  s.deferredFrees = counters_.deferredFrees.get();
  s.threadsBound = counters_.threadsBound.get();
  s.threadsReleased = counters_.threadsReleased.get();
  s.sharedStreamBindings = counters_.sharedStreamBindings.get();
  s.deviceSynchronizes = counters_.deviceSynchronizes.get();
  s.activeStreams = counters_.activeStreams.load(std::memory_order_relaxed);
  s.maxActiveStreams = counters_.maxActiveStreams.load(std::memory_order_relaxed);
  for (Stream* stream : createdStreams()) {
    s.streams.push_back(stream->stats());
  }
  s.domains = domains_.stats();
  return s;
}

} // namespace at::mps::threadsafe
