#pragma once

// mps_sim after fork() (Note [Device use after fork] in fork.cpp).

#include "errors.h"

namespace mps_sim {

// Any use of the device in a fork() child of a process that had set it up (a RuntimeError in
// Python, as torch.cuda raises).
class BadForkError : public at::mps::threadsafe::Error {
 public:
  using Error::Error;
};

// Called as the device is first set up: from then on a fork() child is in a bad fork.
void noteDeviceInitialized();
// Whether this process is the child of a fork() made after the device was set up.
bool inBadFork();
// Raises BadForkError in such a child; a no-op everywhere else.
void checkNotInBadFork();

} // namespace mps_sim
