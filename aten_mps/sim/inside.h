#pragma once

// Note [Thread inside]
// None of Metal's command objects is thread-safe. Each sim object records the thread inside
// one of its methods in an atomic word (compare-and-swap from 0 to the thread's token); a
// second thread finding it taken is a ConcurrentUse violation, the crash Metal would have.
// The check comes before, and is independent of, the object's internal mutex: that mutex only
// keeps the sim's own bookkeeping memory-safe when policy Count lets misuse carry on, and is
// held just for the state change, never across the race window, so concurrent misuse still
// overlaps and is still seen.

#include <atomic>
#include <cstdint>
#include <string>

#include "../function_ref.h"
#include "sim_device.h"
#include "state.h"

namespace at::mps::threadsafe::sim {

class Inside {
 public:
  // Marks the calling thread inside the object whose owner word is `user` for the guard's
  // lifetime, then lingers at `point` (the race-window knob). `describe` names the object in
  // the violation message; it is only called on a violation.
  Inside(SimDevice::State& state, std::atomic<uint64_t>& user, RacePoint point,
         FunctionRef<std::string()> describe);
  ~Inside();
  Inside(const Inside&) = delete;
  Inside& operator=(const Inside&) = delete;

 private:
  std::atomic<uint64_t>& user_;
  bool entered_ = false; // false when nested on this thread, or when another thread is inside
};

// A kernel using a SharedObject being encoded (SimComputeEncoder::dispatchWith): checks the
// object is not destroyed and no other thread is encoding it.
class ObjectUse {
 public:
  ObjectUse(SimDevice::State& state, SharedObject& object);
  ObjectUse(const ObjectUse&) = delete;
  ObjectUse& operator=(const ObjectUse&) = delete;

 private:
  // Reports UseAfterRelease for a destroyed (or being destroyed) object; returns its owner word.
  static std::atomic<uint64_t>& liveUser(SimDevice::State& state, SharedObject& object);
  static std::string describe(const SharedObject& object);
  Inside inside_;
};

} // namespace at::mps::threadsafe::sim
