#pragma once

// The Metal backend of the runtime (backend.h over Metal, MetalPerformanceShaders and GCD).
// This header is plain C++ so that C++ translation units can create the device; the
// implementation is Objective-C++ (macOS only) and, like the rest of ATen's Objective-C++,
// uses manual reference counting (see metal_objects.h).

#include <memory>

#include "../backend.h"

namespace at::mps::threadsafe::metal {

// The device over `mtlDevice`, an id<MTLDevice> passed as a pointer (the device retains it).
// Raises Error when mtlDevice is null.
std::unique_ptr<Device> makeMetalDevice(void* mtlDevice);

} // namespace at::mps::threadsafe::metal
