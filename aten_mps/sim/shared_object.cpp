#include "sim_device.h"

namespace at::mps::threadsafe::sim {

SharedObject::SharedObject(std::string name) : name_(std::move(name)) {}

// Poisons the object: an encode that overlaps its destruction (or, while the memory is not
// reused, follows it) is reported as a use after release.
SharedObject::~SharedObject() {
  released_.store(true, std::memory_order_release);
}

} // namespace at::mps::threadsafe::sim
