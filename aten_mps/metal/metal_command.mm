// CommandQueue, CommandBuffer and ComputeEncoder over MTLCommandQueue, MPSCommandBuffer and
// MTLComputeCommandEncoder. Not thread-safe, like the objects they wrap (backend.h, Note
// [Backend objects are not thread-safe]): the runtime calls them from its streams' queues.

#include "metal_objects.h"

#include <cstdio>
#include <exception>
#include <utility>

#include "../errors.h"

namespace at::mps::threadsafe::metal {

CommandBufferStatus toCommandBufferStatus(MTLCommandBufferStatus status) {
  switch (status) {
    case MTLCommandBufferStatusNotEnqueued:
    case MTLCommandBufferStatusEnqueued:
      return CommandBufferStatus::NotEnqueued;
    case MTLCommandBufferStatusCommitted:
    case MTLCommandBufferStatusScheduled:
      return CommandBufferStatus::Committed;
    case MTLCommandBufferStatusCompleted:
      return CommandBufferStatus::Completed;
    case MTLCommandBufferStatusError:
      return CommandBufferStatus::Error;
  }
  return CommandBufferStatus::Error;
}

NSString* toNSString(const std::string& text) {
  NSString* string = [NSString stringWithUTF8String:text.c_str()];
  return string != nil ? string : @"";
}

// ---- ComputeEncoder ---------------------------------------------------------------------

MetalComputeEncoder::MetalComputeEncoder(id<MTLComputeCommandEncoder> encoder)
    : encoder_([encoder retain]) {}

MetalComputeEncoder::~MetalComputeEncoder() {
  [encoder_ release];
}

void MetalComputeEncoder::endEncoding() {
  [encoder_ endEncoding];
}

// ---- CommandBuffer ----------------------------------------------------------------------

MetalCommandBuffer::MetalCommandBuffer(MPSCommandBuffer* buffer) : buffer_([buffer retain]) {}

MetalCommandBuffer::~MetalCommandBuffer() {
  // Handlers still pending belong to work never committed: it will not run, so neither do they.
  [buffer_ release];
}

std::shared_ptr<ComputeEncoder> MetalCommandBuffer::makeComputeEncoder() {
  id<MTLComputeCommandEncoder> encoder = [buffer_ computeCommandEncoder];
  if (encoder == nil) {
    throw Error("Metal returned no compute command encoder (is another encoder still open on "
                "this command buffer?)");
  }
  return std::make_shared<MetalComputeEncoder>(encoder);
}

void MetalCommandBuffer::encodeSignalEvent(SharedEvent& event, uint64_t value) {
  [buffer_ encodeSignalEvent:static_cast<id<MTLSharedEvent>>(event.native()) value:value];
}

void MetalCommandBuffer::encodeWaitForEvent(SharedEvent& event, uint64_t value) {
  [buffer_ encodeWaitForEvent:static_cast<id<MTLSharedEvent>>(event.native()) value:value];
}

void MetalCommandBuffer::addCompletedHandler(CompletionHandler handler) {
  pendingHandlers_.push_back(std::move(handler));
}

void MetalCommandBuffer::attachPendingHandlers() {
  for (CompletionHandler& pending : pendingHandlers_) {
    // Blocks copy captured C++ objects with their copy constructor; share one handler.
    auto handler = std::make_shared<CompletionHandler>(std::move(pending));
    [buffer_ addCompletedHandler:^(id<MTLCommandBuffer> completed) {
      const CommandBufferStatus status = toCommandBufferStatus(completed.status);
      std::string error;
      if (completed.error != nil) {
        const char* description = completed.error.localizedDescription.UTF8String;
        error = description != nullptr ? description : "unknown Metal error";
      }
      // Metal's completion thread has no one to report to: an exception must not unwind into
      // it. The runtime's handlers only record progress and do not throw.
      try {
        (*handler)(error.empty() ? status : CommandBufferStatus::Error, error);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[mps threadsafe] completion handler failed: %s\n", e.what());
      } catch (...) {
        std::fprintf(stderr, "[mps threadsafe] completion handler failed\n");
      }
    }];
  }
  pendingHandlers_.clear();
}

void MetalCommandBuffer::commit() {
  attachPendingHandlers();
  [buffer_ commit];
}

void MetalCommandBuffer::commitAndContinue() {
  attachPendingHandlers();
  [buffer_ commitAndContinue];
}

CommandBufferStatus MetalCommandBuffer::status() const {
  // MPSCommandBuffer forwards to its current underlying MTLCommandBuffer.
  return toCommandBufferStatus(buffer_.status);
}

// ---- CommandQueue -----------------------------------------------------------------------

MetalCommandQueue::MetalCommandQueue(id<MTLCommandQueue> queue) : queue_(queue) {}

MetalCommandQueue::~MetalCommandQueue() {
  [queue_ release];
}

std::shared_ptr<CommandBuffer> MetalCommandQueue::makeCommandBuffer() {
  MPSCommandBuffer* buffer = [MPSCommandBuffer commandBufferFromCommandQueue:queue_];
  if (buffer == nil) {
    throw Error("MPSCommandBuffer commandBufferFromCommandQueue: returned nil");
  }
  return std::make_shared<MetalCommandBuffer>(buffer);
}

} // namespace at::mps::threadsafe::metal
