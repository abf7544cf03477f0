#pragma once

// What a stream needs of the runtime that owns it, handed to it at construction.
//
// Note [A stream knows its context, not its runtime]
// A Stream calls out for a handful of things that are device-wide: the counters, the
// protections, the contract-error count, the buffer-use tracker, the commit policy and two
// questions of the thread policy. It is given exactly these, in a StreamContext the Runtime
// owns and builds its streams with, and never sees the Runtime itself: runtime.h includes
// stream.h, stream.{h,cpp} do not include runtime.h, so the dependency runs one way. This is
// the shape of c10's CUDAStream.cpp and MLX's metal device.cpp: the device (pool) owns its
// streams and the stream holds no pointer back to it. The context outlives every stream built
// with it (the Runtime destroys its streams before its context), and is shared by them, so
// `&a.context() == &b.context()` is "same device" (Stream::waitForStream checks it).
//
// Note [The thread policy behind an interface]
// Two of a stream's questions are Runtime thread-policy logic: "did this thread's policy
// choose me under a policy that has switched since?" (Note [Switching the policy], asked at
// the end of every dispatch) and "this thread encoded work on me" (once per thread and batch,
// so the thread gives the stream back when it exits). Both read or write the same per-thread
// binding the Runtime keeps (its thread_local bindings and policy epoch), so they stay in the
// Runtime, behind the narrow StreamThreadPolicy interface it implements, rather than as two
// FunctionRefs: a FunctionRef does not own its callable, so the Runtime would have to keep two
// callables alive exactly as long as its streams, which the interface gets by construction
// (the context refers to the Runtime itself); and the two calls are one concern, which one
// interface names. The cost is one virtual call per dispatch, next to a queue entry.

#include <string>

#include "commit_policy.h"
#include "diagnostics.h"
#include "errors.h"
#include "protections.h"

namespace at::mps::threadsafe {

class BufferUseTracker;
class Stream;

// Note [The thread policy behind an interface]. Called on the thread that encodes, with the
// stream's queue held.
class StreamThreadPolicy {
 public:
  // Whether the calling thread's policy chose `stream` under a policy that has switched since
  // (its dispatch then commits before leaving the queue).
  virtual bool choseByStalePolicy(const Stream& stream) const = 0;
  // The calling thread encoded work on `stream` (once per batch).
  virtual void noteThreadWorkedOn(Stream& stream) = 0;

 protected:
  StreamThreadPolicy() = default;
  StreamThreadPolicy(const StreamThreadPolicy&) = default;
  StreamThreadPolicy& operator=(const StreamThreadPolicy&) = default;
  ~StreamThreadPolicy() = default;
};

// Note [A stream knows its context, not its runtime]. Every member refers to state the owner
// keeps; none is owned here.
struct StreamContext {
  RuntimeCounters& counters;
  const AtomicProtections& protections; // read with one atomic load per decision
  const CommitPolicy& commitPolicy;
  BufferUseTracker& bufferUses;
  StreamThreadPolicy& threadPolicy;
  int poolSize; // the streams a stream may wait for have ids 0..poolSize

  // A broken contract: counted (RuntimeCounters::contractViolations), then raised.
  [[noreturn]] void contractError(const std::string& message) const {
    counters.contractViolations.add();
    throw ContractError(message);
  }
};

} // namespace at::mps::threadsafe
