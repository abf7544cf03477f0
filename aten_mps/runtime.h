#pragma once

// The runtime: one device's streams (the default stream and a fixed pool), the thread policy
// that decides which stream a thread encodes on, the serialization domains, the buffer-use
// tracker, the device-wide synchronize and the counters.
//
// Note [Stream ids]
// Id 0 is the default stream; ids 1..poolSize are the pool (upstream: 32 streams). Streams are
// created on first use and live as long as the runtime.
//
// Note [Thread policy]
// Threadsafe off (upstream behaviour): every thread encodes on the default stream, one after
// another through its serial queue. Threadsafe on: a thread's first request binds it to a pool
// stream no other thread holds; the binding is sticky and is given back when the thread exits
// (its open batch committed, never dropped). When all pool streams are bound, new threads
// share the least-bound stream: still safe, since its queue serializes them, only slower
// (counted in sharedStreamBindings). A stream set explicitly with setCurrentStream (a stream
// guard) always wins over the policy.
//
// Note [Switching the policy]
// A thread reads the policy, then enters the chosen stream's queue: a switch can happen in
// between (issue 8.6), and the thread then encodes on the stream of the old policy, which it
// will not use again. So the switch moves a policy epoch (odd while switching), the thread
// remembers the epoch it read with the stream the policy gave it, and Stream::dispatch, at
// the end of a dispatch onto a stream chosen under an older (or a switching) epoch, commits
// the batch before leaving the queue: work encoded under the old policy is never left
// uncommitted. setThreadsafe() refuses (WorkInFlightError) while another thread has encoded work that it
// has not committed, or holds an encoder lease: that work belongs to the thread's open
// command buffer, which only its own thread may end. Otherwise it commits the caller's own
// work, waits for every submitted batch on every stream (a drain), then switches. Uses that
// cross the switch stay ordered through the buffer-use tracker, which does not depend on the
// policy.
//
// Note [Device-wide synchronize]
// synchronizeDevice() covers all work encoded on the device before it was called, by any
// thread, as cudaDeviceSynchronize does. It commits the calling thread's current stream (if it
// has one: it binds no stream to a thread that has encoded nothing), gets every other stream's
// open batch that holds work committed through Note [Closing a batch on request] (requestClose
// and, when that stream's queue is free, a commit from inside the queue; when a thread is
// inside, that thread commits at the end of its dispatch), then waits, on the CPU, for all of
// them. This is what makes synchronize() right after join() cover the joined thread's work:
// Python's join() returns before the thread's thread_local bookkeeping gives its stream back
// (issue 8.4). It never ends, commits or encodes into another stream's command buffer from
// outside that stream's queue, so it never ends an encoder while its thread encodes (the
// mistake a reviewer caught in CTranslate2's MPS backend): the encoder lease only exists
// inside the queue, and the queue is ours only when nobody else is in it.
//
// Note [Abandoned after fork]
// fork() copies only the calling thread. In the child of a process that created a runtime, any
// mutex or serial queue another thread of the parent held at the fork stays held forever, and
// the GPU / completion threads that would finish submitted work do not exist. The device's
// entry points refuse every use there (mps_sim's fork.cpp, torch.mps's Note [MPS after
// fork]); but a child that exits normally (exit(), the interpreter's shutdown) still runs the
// runtime's own teardown: the exiting thread's thread_local bindings give its streams back
// (entering their queues, taking the runtime's locks) and static destructors run. Each of
// those could wait forever on a lock a parent thread held. So the first Runtime of a process
// registers a pthread_atfork child handler that only sets a flag (the one thing safe to do in
// the child of a threaded process), and every teardown path — thread exit, unbind, the
// runtime's destructor — returns at once when it is set: the parent's state is abandoned, not
// repaired. A fork before any runtime exists registers nothing and abandons nothing.

// Note [Runtime lifetime]
// The process-wide runtime (the torch device's) is created once and deliberately leaked, like
// c10's CUDA stream pool: no destructor may run during static destruction while GPU or
// handler threads still use it. Runtimes created by tests are destroyed, after the threads
// that used them have ended; a thread that exits after its runtime is gone gives nothing back.

#include <cstdint>
#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "backend.h"
#include "buffer_uses.h"
#include "commit_policy.h"
#include "diagnostics.h"
#include "domains.h"
#include "protections.h"
#include "stream.h"
#include "stream_context.h"

namespace at::mps::threadsafe {

struct RuntimeOptions {
  int poolSize = 32;
  bool threadsafe = false;
  Protections protections = Protections::all();
  // Upstream's _enableCommitAndContinue: SyncType::COMMIT keeps the MPSCommandBuffer open.
  bool commitAndContinue = true;
};

// Whether this process is the child of a fork() taken after a runtime was created (Note
// [Abandoned after fork]).
bool abandonedAfterFork() noexcept;

// Builds its streams with a StreamContext it owns, and answers their thread-policy questions
// (Note [A stream knows its context, not its runtime]). Final: it is never a base, and a class
// with virtual functions and a public non-virtual destructor fails PyTorch's
// -Werror=non-virtual-dtor.
class Runtime final : public StreamThreadPolicy {
 public:
  explicit Runtime(std::unique_ptr<Device> device, RuntimeOptions options = {});
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  Device& device() {
    return *device_;
  }
  int poolSize() const {
    return poolSize_;
  }

  // ---- Streams (Note [Stream ids]) --------------------------------------------------------
  Stream& defaultStream();
  Stream& stream(int id); // InvalidArgument outside 0..poolSize
  // Upstream getStreamFromPool(): round-robin, not exclusive.
  Stream& streamFromPool();
  // Streams created so far, in id order.
  std::vector<Stream*> createdStreams() const;
  // Whether `stream` is one of this runtime's streams.
  bool owns(const Stream& stream) const;

  // ---- Thread policy (Note [Thread policy]) -----------------------------------------------
  Stream& currentStream();
  // The stream currentStream() would return, without binding a pool stream to a thread that
  // has none yet (nullptr then).
  Stream* currentStreamIfAny();
  // The stream guard: `stream` becomes this thread's current stream; nullptr restores the
  // policy. InvalidArgument for a stream of another runtime.
  void setCurrentStream(Stream* stream);
  Stream* explicitStream() const;
  bool threadsafe() const {
    return threadsafe_.load(std::memory_order_acquire);
  }
  void setThreadsafe(bool on); // Note [Switching the policy]
  // Whether this thread's policy chose `stream` under a policy that has switched since.
  bool choseByStalePolicy(const Stream& stream) const override;
  // Gives this thread's bound pool stream back now (thread exit does it too).
  void releaseThreadStream();
  // Records that the calling thread encoded work on `stream` (once per batch, from the
  // stream): at thread exit it gives every such stream back (Note [GPU errors belong to
  // batches]).
  void noteThreadWorkedOn(Stream& stream) override;

  // ---- Protections (protections.h) --------------------------------------------------------
  Protections protections() const;
  void setProtections(Protections protections);
  bool commitAndContinue() const {
    return commitPolicy_.commitAndContinue();
  }

  // COMMIT_ADAPTIVE asks this (the allocator's low-watermark test upstream).
  void setMemoryPressureProbe(std::function<bool()> probe) {
    commitPolicy_.setMemoryPressureProbe(std::move(probe));
  }
  bool underMemoryPressure() const {
    return commitPolicy_.underMemoryPressure();
  }

  // ---- Cross-stream state -----------------------------------------------------------------
  DomainRegistry& domains() {
    return domains_;
  }
  BufferUseTracker& bufferUses() {
    return bufferUses_;
  }
  PendingFrees& pendingFrees() {
    return pendingFrees_;
  }
  void synchronizeDevice(); // Note [Device-wide synchronize]

  // ---- Diagnostics ------------------------------------------------------------------------
  RuntimeCounters& counters() {
    return counters_;
  }
  RuntimeStats stats() const;
  // Raises a ContractError after counting it.
  [[noreturn]] void contractError(const std::string& message);

  // Shared with thread bindings so a thread exiting after the runtime is gone does nothing.
  struct Life {
    std::mutex mutex; // held while a binding is given back, and while the runtime dies
    Runtime* runtime; // nullptr once the runtime is gone
  };
  // Gives back a stream bound to an exiting thread (thread-local bookkeeping calls it).
  void unbind(Stream& stream) noexcept;

 private:
  Stream& createStream(int id); // streamsMutex_ held

  std::unique_ptr<Device> device_;
  const int poolSize_;
  CommitPolicy commitPolicy_;
  std::atomic<bool> threadsafe_;
  AtomicProtections protections_;
  const uint64_t serial_; // tells runtimes apart in thread-local state
  std::shared_ptr<Life> life_;

  mutable std::mutex streamsMutex_; // creation of streams, bindings
  std::vector<std::atomic<Stream*>> streams_; // Note [Stream ids]; created lazily
  std::atomic<uint32_t> roundRobin_{0};
  std::mutex policyMutex_; // serializes setThreadsafe
  std::atomic<uint64_t> policyEpoch_{0}; // Note [Switching the policy]

  RuntimeCounters counters_; // before pendingFrees_, which counts into it
  DomainRegistry domains_;
  BufferUseTracker bufferUses_;
  PendingFrees pendingFrees_{counters_.deferredFrees};
  // What the streams get of the above (Note [A stream knows its context, not its runtime]);
  // the streams are destroyed in ~Runtime, before it.
  StreamContext streamContext_;
};

} // namespace at::mps::threadsafe
