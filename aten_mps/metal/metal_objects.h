#pragma once

// The Metal backend's classes (Objective-C++ only). Each wraps one Metal object and owns one
// reference to it.
//
// Note [Manual reference counting]
// ATen compiles its Objective-C++ without ARC (upstream MPSStream.mm and MPSAllocator.h send
// retain/release explicitly), and so do we: every Objective-C object a class here holds was
// retained (or created by a new/alloc method) when stored and is released in the destructor.
// Objects that Metal hands back autoreleased (MPSCommandBuffer's factory, the encoders) are
// retained at once. native() returns the object without retaining it.
//
// Note [Completion handlers are attached at commit]
// MPSGraph may commitAndContinue the MPSCommandBuffer it encodes into, and a handler added to
// an MPSCommandBuffer lands on the underlying MTLCommandBuffer current at that moment. A
// handler added when the runtime asks (before the batch is complete) could therefore fire
// when only the first part of the batch has run. So the command buffer keeps the handlers
// and attaches them just before the commit they belong to, to the underlying buffer that
// commit submits; buffers of one queue complete in commit order, so that is the batch's end.

#ifndef __OBJC__
#error "metal_objects.h is Objective-C++"
#endif
#if __has_feature(objc_arc)
#error "The Metal backend uses manual reference counting, like the rest of ATen's Objective-C++ (Note [Manual reference counting])"
#endif

#include <Metal/Metal.h>
#include <MetalPerformanceShaders/MetalPerformanceShaders.h>
#include <dispatch/dispatch.h>

#include <mutex>
#include <string>
#include <vector>

#include "../backend.h"

namespace at::mps::threadsafe::metal {

class MetalSerialExecutor final : public SerialExecutor {
 public:
  explicit MetalSerialExecutor(const std::string& label);
  ~MetalSerialExecutor() override;
  uint64_t dispatchSync(FunctionRef<void()> fn) override;
  bool tryDispatchSync(FunctionRef<void()> fn) override;
  bool isCurrent() const override;
  void* native() override {
    return queue_;
  }

 private:
  void runOnQueue(FunctionRef<void()> fn);
  void refuseReentry(const char* what) const;

  std::string label_;
  dispatch_queue_t queue_;
  // Admission to the queue. dispatch_sync gives no way to ask "is the queue free?", which
  // tryDispatchSync must answer without blocking (stream.h, Note [Closing a batch on
  // request]); the gate answers it. It guards exactly what the serial queue guards, so it
  // adds no exclusion of its own.
  std::mutex gate_;
};

class MetalSharedEvent final : public SharedEvent {
 public:
  // Adopts `event` (a +1 reference); retains `listener`.
  MetalSharedEvent(id<MTLSharedEvent> event, MTLSharedEventListener* listener);
  ~MetalSharedEvent() override;
  uint64_t signaledValue() const override;
  void waitUntilSignaled(uint64_t value) override;
  void* native() override {
    return event_;
  }

 private:
  id<MTLSharedEvent> event_;
  MTLSharedEventListener* listener_;
};

class MetalComputeEncoder final : public ComputeEncoder {
 public:
  explicit MetalComputeEncoder(id<MTLComputeCommandEncoder> encoder); // retains
  ~MetalComputeEncoder() override;
  void endEncoding() override;
  void* native() override {
    return encoder_;
  }

 private:
  id<MTLComputeCommandEncoder> encoder_;
};

class MetalCommandBuffer final : public CommandBuffer {
 public:
  explicit MetalCommandBuffer(MPSCommandBuffer* buffer); // retains
  ~MetalCommandBuffer() override;
  std::shared_ptr<ComputeEncoder> makeComputeEncoder() override;
  void encodeSignalEvent(SharedEvent& event, uint64_t value) override;
  void encodeWaitForEvent(SharedEvent& event, uint64_t value) override;
  void addCompletedHandler(CompletionHandler handler) override;
  void commit() override;
  void commitAndContinue() override;
  CommandBufferStatus status() const override;
  void* native() override {
    return buffer_;
  }

 private:
  void attachPendingHandlers(); // Note [Completion handlers are attached at commit]

  MPSCommandBuffer* buffer_;
  std::vector<CompletionHandler> pendingHandlers_;
};

class MetalCommandQueue final : public CommandQueue {
 public:
  explicit MetalCommandQueue(id<MTLCommandQueue> queue); // adopts a +1 reference
  ~MetalCommandQueue() override;
  std::shared_ptr<CommandBuffer> makeCommandBuffer() override;
  void* native() override {
    return queue_;
  }

 private:
  id<MTLCommandQueue> queue_;
};

class MetalDevice final : public Device {
 public:
  explicit MetalDevice(id<MTLDevice> device); // retains
  ~MetalDevice() override;
  std::string name() const override;
  std::unique_ptr<CommandQueue> makeCommandQueue(const std::string& label) override;
  std::unique_ptr<SerialExecutor> makeSerialExecutor(const std::string& label) override;
  std::shared_ptr<SharedEvent> makeSharedEvent() override;

 private:
  id<MTLDevice> device_;
  // One listener (with its own serial queue) serves every CPU wait on this device's events.
  MTLSharedEventListener* listener_;
};

CommandBufferStatus toCommandBufferStatus(MTLCommandBufferStatus status);

// An NSString for a C++ string, autoreleased.
NSString* toNSString(const std::string& text);

} // namespace at::mps::threadsafe::metal
