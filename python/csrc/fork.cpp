#include "fork.h"

#include <pthread.h>

#include <atomic>
#include <mutex>

namespace mps_sim {
namespace {

// Note [Device use after fork]
// fork() copies only the calling thread. A child of a process that has set up the device has
// none of the sim's GPU, handler and job threads, so work it commits never completes and its
// first blocking read would wait forever; any mutex another thread of the parent held at the
// fork (a stream's queue, a free list, the runtime's own) stays held in the child. Nothing of
// the parent's device is usable there, and nothing can be repaired safely. So, as
// torch.cuda does (torch/csrc/utils/device_lazy_init.cpp, forked_autograd_child), the device
// registers a pthread_atfork child handler when it is first set up; the handler only sets a
// flag, and in the child every entry into the device (runtime(), simDevice(), the allocator)
// raises BadForkError — a RuntimeError in Python — before touching any of that state.
// Freeing in the child a block the parent allocated does nothing: the memory is the parent's
// copy, and the allocator's bookkeeping may be mid-update. A fork before the device was set up
// registers nothing, and the child sets up its own device on first use.
std::atomic<bool> badFork{false};

void onForkChild() {
  badFork.store(true, std::memory_order_relaxed);
}

} // namespace

void noteDeviceInitialized() {
  static std::once_flag registered;
  std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, &onForkChild); });
}

bool inBadFork() {
  return badFork.load(std::memory_order_relaxed);
}

void checkNotInBadFork() {
  if (inBadFork()) [[unlikely]] {
    throw BadForkError(
        "Cannot re-initialize mps_sim in forked subprocess. To use mps_sim with "
        "multiprocessing, you must use the 'spawn' start method");
  }
}

} // namespace mps_sim
