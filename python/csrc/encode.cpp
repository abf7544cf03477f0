#include "encode.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/util/Exception.h>

#include <dlfcn.h>

#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "domains.h"
#include "guard.h"
#include "runtime_access.h"

namespace mps_sim {

SharedKernel sharedKernel(const char* opClass, const std::string& key) {
  static std::mutex mutex;
  // Leaked with the runtime (Note [Runtime lifetime]): kernels may still hold the objects.
  static auto* cache = new std::unordered_map<std::string, std::shared_ptr<ts::sim::SharedObject>>();
  const std::string fullKey = std::string(opClass) + ":" + key;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = (*cache)[fullKey];
  if (!slot) {
    slot = std::make_shared<ts::sim::SharedObject>(fullKey);
  }
  return SharedKernel{opClass, slot};
}

namespace {

// Note [One core per sim queue]
// A sim GPU queue executes its kernels on one thread, like one GPU queue; ATen's CPU kernels
// would otherwise open an OpenMP team per queue thread, oversubscribing the machine (and, with
// spinning workers, slowing each kernel by orders of magnitude). The first kernel on each queue
// thread initializes ATen's thread settings there, then caps that thread's OpenMP team at one.
// Looked up at run time: torch links libgomp on Linux and libomp on macOS.
void oneCorePerQueue() {
  thread_local bool done = false;
  if (done) {
    return;
  }
  done = true;
  (void)at::get_num_threads(); // ATen's lazy per-thread init, which would undo ours later
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"))) {
    set(1);
  }
}

} // namespace

ts::Stream& currentStream() {
  checkThreadStream();
  return runtime().currentStream();
}

void encodeKernel(const std::vector<ts::BufferUse>& uses, std::function<void()> kernel,
                  const SharedKernel* shared, ts::SyncType sync) {
  ts::Runtime& rt = runtime();
  ts::Stream& stream = currentStream();
  // Note [The caller's thread-local state]
  // The kernel runs ATen ops on the sim GPU thread, after the caller has moved on. They must
  // see the dispatch state of the caller at encode time: inference_mode (host aliases of
  // inference tensors may only be written inside it), no_grad, autocast, excluded dispatch
  // keys, saved-tensor hooks, the profiler's record functions. ATen's own carrier for this is
  // at::ThreadLocalState, which at::launch and the autograd engine's workers use the same way.
  auto onQueueThread = [body = std::move(kernel), state = at::ThreadLocalState()] {
    at::ThreadLocalStateGuard callerState(state);
    oneCorePerQueue();
    try {
      body();
    } catch (const c10::Error& e) {
      // Without the C++ backtrace (Note [Kernel errors] in ops_generic.cpp).
      throw std::runtime_error(e.what_without_backtrace());
    }
  };
  stream.dispatch([&] {
    stream.useBuffers(uses.data(), uses.size());
    {
      if (shared != nullptr) {
        ts::DomainGuard domain(rt.domains().forClass(shared->opClass), rt.protections().domains);
        auto lease = stream.leaseEncoder();
        ts::sim::simEncoder(lease.encoder()).dispatchWith(*shared->object, std::move(onQueueThread));
      } else {
        auto lease = stream.leaseEncoder();
        ts::sim::simEncoder(lease.encoder()).dispatch(std::move(onQueueThread));
      }
    }
    if (sync != ts::SyncType::NONE) {
      stream.synchronize(sync);
    }
  });
}

} // namespace mps_sim
