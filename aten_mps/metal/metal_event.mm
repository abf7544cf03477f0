// SharedEvent over MTLSharedEvent: the per-stream timeline (stream.h, Note [Batches and the
// timeline]).

#include "metal_objects.h"

namespace at::mps::threadsafe::metal {

MetalSharedEvent::MetalSharedEvent(id<MTLSharedEvent> event, MTLSharedEventListener* listener)
    : event_(event), listener_([listener retain]) {}

MetalSharedEvent::~MetalSharedEvent() {
  [event_ release];
  [listener_ release];
}

uint64_t MetalSharedEvent::signaledValue() const {
  return event_.signaledValue;
}

// Blocks on a semaphore the listener signals once the event reaches `value` (Metal calls the
// block at once when the value has already been reached). The same listener mechanism serves
// MPSEvent's timing notifications; -waitUntilSignaledValue:timeoutMS: (macOS 14+) would only
// add a timeout, which no caller here can act on.
void MetalSharedEvent::waitUntilSignaled(uint64_t value) {
  if (event_.signaledValue >= value) {
    return;
  }
  dispatch_semaphore_t reached = dispatch_semaphore_create(0);
  // The block retains `reached` when Metal copies it, so releasing ours below is safe even if
  // the block has not returned yet.
  [event_ notifyListener:listener_
                 atValue:value
                   block:^(id<MTLSharedEvent> /*event*/, uint64_t /*signaled*/) {
                     dispatch_semaphore_signal(reached);
                   }];
  dispatch_semaphore_wait(reached, DISPATCH_TIME_FOREVER);
  dispatch_release(reached);
}

} // namespace at::mps::threadsafe::metal
