// Device over an MTLDevice: makes the queues, executors and timeline events of the runtime's
// streams.

#include "metal_device.h"
#include "metal_objects.h"

#include "../errors.h"

namespace at::mps::threadsafe::metal {

MetalDevice::MetalDevice(id<MTLDevice> device) : device_([device retain]), listener_(nil) {
  dispatch_queue_t listenerQueue =
      dispatch_queue_create("mps threadsafe event listener", DISPATCH_QUEUE_SERIAL);
  listener_ = [[MTLSharedEventListener alloc] initWithDispatchQueue:listenerQueue];
  dispatch_release(listenerQueue); // the listener keeps its queue
}

MetalDevice::~MetalDevice() {
  [listener_ release];
  [device_ release];
}

std::string MetalDevice::name() const {
  const char* name = device_.name.UTF8String;
  return name != nullptr ? name : "Metal device";
}

std::unique_ptr<CommandQueue> MetalDevice::makeCommandQueue(const std::string& label) {
  id<MTLCommandQueue> queue = [device_ newCommandQueue];
  if (queue == nil) {
    throw Error("MTLDevice newCommandQueue failed for '" + label + "'");
  }
  queue.label = toNSString(label);
  return std::make_unique<MetalCommandQueue>(queue);
}

std::unique_ptr<SerialExecutor> MetalDevice::makeSerialExecutor(const std::string& label) {
  return std::make_unique<MetalSerialExecutor>(label);
}

std::shared_ptr<SharedEvent> MetalDevice::makeSharedEvent() {
  id<MTLSharedEvent> event = [device_ newSharedEvent];
  if (event == nil) {
    throw Error("MTLDevice newSharedEvent failed");
  }
  return std::make_shared<MetalSharedEvent>(event, listener_);
}

std::unique_ptr<Device> makeMetalDevice(void* mtlDevice) {
  if (mtlDevice == nullptr) {
    throw Error("makeMetalDevice: no MTLDevice (is MPS available on this machine?)");
  }
  return std::make_unique<MetalDevice>(static_cast<id<MTLDevice>>(mtlDevice));
}

} // namespace at::mps::threadsafe::metal
