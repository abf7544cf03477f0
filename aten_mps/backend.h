#pragma once

// The device the runtime drives, as a handful of abstract objects that mirror Metal's:
// a command queue makes command buffers; a command buffer makes compute encoders, encodes
// event signals and waits, takes completion handlers and is committed; a shared event is a
// 64-bit timeline both the CPU and the GPU can wait on; a serial executor is a GCD-style
// serial queue. Two backends implement it: `metal/` (Objective-C++, macOS) and `sim/`
// (a software device that checks Metal's object rules, used on every platform).
//
// Note [Backend objects are not thread-safe]
// Exactly like their Metal counterparts, none of these objects may be used by two threads at
// once, and none may be used after it has been released. Keeping that promise is the
// runtime's whole job: every call below is made by a Stream from inside its serial executor
// (see stream.h). The sim backend checks the promise and reports each breach the way
// Metal's API validation layer (or the driver's crash) would.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "function_ref.h"

namespace at::mps::threadsafe {

enum class CommandBufferStatus : uint8_t { NotEnqueued, Committed, Completed, Error };

const char* toString(CommandBufferStatus status);

// A 64-bit timeline signalled by the GPU (MTLSharedEvent). Values only grow.
class SharedEvent {
 public:
  virtual ~SharedEvent() = default;
  virtual uint64_t signaledValue() const = 0;
  // Blocks the calling CPU thread until signaledValue() >= value.
  virtual void waitUntilSignaled(uint64_t value) = 0;
  virtual void* native() = 0;
};

class ComputeEncoder {
 public:
  virtual ~ComputeEncoder() = default;
  virtual void endEncoding() = 0;
  virtual void* native() = 0;
};

// Called once a command buffer (or the part of it committed by commitAndContinue) has run;
// `error` is empty unless the status is Error. Runs on a thread of the backend's choosing,
// never the committing one.
using CompletionHandler = std::function<void(CommandBufferStatus status, const std::string& error)>;

// MPSCommandBuffer: a command buffer that commitAndContinue() can commit while keeping the
// object open for more work (it swaps in a fresh underlying MTLCommandBuffer).
class CommandBuffer {
 public:
  virtual ~CommandBuffer() = default;
  virtual std::shared_ptr<ComputeEncoder> makeComputeEncoder() = 0;
  virtual void encodeSignalEvent(SharedEvent& event, uint64_t value) = 0;
  virtual void encodeWaitForEvent(SharedEvent& event, uint64_t value) = 0;
  // Applies to the work committed next (by commit or commitAndContinue).
  virtual void addCompletedHandler(CompletionHandler handler) = 0;
  virtual void commit() = 0;
  virtual void commitAndContinue() = 0;
  virtual CommandBufferStatus status() const = 0;
  virtual void* native() = 0;
};

class CommandQueue {
 public:
  virtual ~CommandQueue() = default;
  virtual std::shared_ptr<CommandBuffer> makeCommandBuffer() = 0;
  virtual void* native() = 0;
};

// A serial queue with dispatch_sync semantics: the function runs on the calling thread,
// never at the same time as another function dispatched to the same executor; exceptions
// propagate to the caller. Dispatching to an executor from inside itself would deadlock on
// GCD; implementations detect it and throw ReentryError instead.
class SerialExecutor {
 public:
  virtual ~SerialExecutor() = default;
  // Returns the nanoseconds the caller waited to get in (0 when uncontended).
  virtual uint64_t dispatchSync(FunctionRef<void()> fn) = 0;
  // Runs fn only if the executor is free right now; returns whether it ran. Never blocks;
  // from inside the executor itself it throws ReentryError like dispatchSync.
  virtual bool tryDispatchSync(FunctionRef<void()> fn) = 0;
  // True on the thread running inside the executor, however it got in (the Metal backend
  // also recognizes raw dispatch_sync blocks through a queue-specific key).
  virtual bool isCurrent() const = 0;
  virtual void* native() = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  virtual std::unique_ptr<CommandQueue> makeCommandQueue(const std::string& label) = 0;
  virtual std::unique_ptr<SerialExecutor> makeSerialExecutor(const std::string& label) = 0;
  virtual std::shared_ptr<SharedEvent> makeSharedEvent() = 0;
};

} // namespace at::mps::threadsafe
