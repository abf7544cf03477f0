// The Python face of the runtime (mps_threadsafe._C): thread policy, protections, streams by
// id, counters as dicts, and the sim device's settings. torch.mps_sim (python/mps_threadsafe/
// mps_sim.py) builds the torch.mps-like API on these.

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "allocator.h"
#include "errors.h"
#include "fork.h"
#include "guard.h"
#include "ops.h"
#include "runtime_access.h"
#include "test_hooks.h"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>

namespace py = pybind11;

namespace mps_sim {
namespace {

py::dict streamStats(const ts::StreamStats& s) {
  py::dict d;
  d["id"] = s.id;
  d["dispatches"] = s.dispatches;
  d["queue_waits"] = s.queueWaits;
  d["queue_wait_ns"] = s.queueWaitNs;
  d["ops_encoded"] = s.opsEncoded;
  d["encoders_created"] = s.encodersCreated;
  d["encoders_coalesced"] = s.encodersCoalesced;
  py::dict commits;
  for (int i = 0; i < ts::kSyncTypeCount; ++i) {
    commits[ts::toString(static_cast<ts::SyncType>(i))] = s.commits[i];
  }
  d["commits"] = commits;
  d["command_buffers_submitted"] = s.commandBuffersSubmitted;
  d["cross_stream_waits"] = s.crossStreamWaits;
  d["close_requests_served"] = s.closeRequestsServed;
  d["gpu_errors"] = s.gpuErrors;
  d["threads_bound"] = s.threadsBound;
  d["overlapped_dispatches"] = s.overlappedDispatches;
  d["submitted_batch"] = s.submittedBatch;
  d["completed_batch"] = s.completedBatch;
  d["owners"] = s.owners;
  return d;
}

py::dict protectionsDict(const ts::Protections& p) {
  py::dict d;
  d["serial_queue"] = p.serialQueue;
  d["domains"] = p.domains;
  d["cross_stream_order"] = p.crossStreamOrder;
  d["deferred_frees"] = p.deferredFrees;
  return d;
}

py::dict simStats() {
  const ts::sim::Stats s = simDevice().stats();
  py::dict d;
  d["kernels_encoded"] = s.kernelsEncoded;
  d["kernels_executed"] = s.kernelsExecuted;
  d["kernels_failed"] = s.kernelsFailed;
  d["kernels_skipped"] = s.kernelsSkipped;
  d["segments_committed"] = s.segmentsCommitted;
  d["segments_completed"] = s.segmentsCompleted;
  d["handlers_run"] = s.handlersRun;
  d["event_signals"] = s.eventSignals;
  d["event_waits"] = s.eventWaits;
  d["violations"] = s.violations;
  d["max_concurrent_queues"] = s.maxConcurrentQueues;
  d["race_meetings"] = s.raceMeetings;
  d["race_meeting_timeouts"] = s.raceMeetingTimeouts;
  return d;
}

py::dict runtimeStats() {
  ts::RuntimeStats s;
  {
    py::gil_scoped_release noGil;
    s = runtime().stats();
  }
  py::dict d;
  d["threadsafe"] = s.threadsafe;
  d["contract_violations"] = s.contractViolations;
  d["deferred_frees"] = s.deferredFrees;
  d["threads_bound"] = s.threadsBound;
  d["threads_released"] = s.threadsReleased;
  d["shared_stream_bindings"] = s.sharedStreamBindings;
  d["device_synchronizes"] = s.deviceSynchronizes;
  d["active_streams"] = s.activeStreams;
  d["max_active_streams"] = s.maxActiveStreams;
  py::list streams;
  for (const auto& stream : s.streams) {
    streams.append(streamStats(stream));
  }
  d["streams"] = streams;
  py::list domains;
  for (const auto& domain : s.domains) {
    py::dict dd;
    dd["name"] = domain.name;
    dd["acquisitions"] = domain.acquisitions;
    dd["waits"] = domain.waits;
    dd["wait_ns"] = domain.waitNs;
    domains.append(dd);
  }
  d["domains"] = domains;
  d["protections"] = protectionsDict(runtime().protections());
  d["sim"] = simStats();
  settleCompletedFrees(); // Note [Pending frees are settled when looked at]
  const AllocatorStats a = allocatorStats();
  py::dict alloc;
  alloc["allocated_bytes"] = a.allocatedBytes;
  alloc["cached_bytes"] = a.cachedBytes;
  alloc["pending_frees"] = a.pendingFrees;
  alloc["host_allocations"] = a.hostAllocations;
  alloc["reuses"] = a.reuses;
  alloc["host_frees"] = a.hostFrees;
  d["allocator"] = alloc;
  return d;
}

ts::sim::ViolationPolicy parsePolicy(const std::string& name) {
  if (name == "abort") {
    return ts::sim::ViolationPolicy::Abort;
  }
  if (name == "throw") {
    return ts::sim::ViolationPolicy::Throw;
  }
  if (name == "count") {
    return ts::sim::ViolationPolicy::Count;
  }
  throw py::value_error("violation policy must be 'abort', 'throw' or 'count', got '" + name + "'");
}

ts::sim::RacePoint parseRacePoint(const std::string& name) {
  if (name == "encoder") {
    return ts::sim::RacePoint::EncoderCall;
  }
  if (name == "command_buffer") {
    return ts::sim::RacePoint::CommandBufferCall;
  }
  if (name == "shared_object") {
    return ts::sim::RacePoint::SharedObjectEncode;
  }
  throw py::value_error("race point must be 'encoder', 'command_buffer' or 'shared_object', got '" +
                        name + "'");
}

} // namespace
} // namespace mps_sim

namespace {

namespace ts = at::mps::threadsafe;

// Test support (Note [Test hooks]): the first `parties` threads that reach `point` wait there
// until all of them have, so a test makes one interleaving certain. A party that waits more
// than 30 s goes on (the test then fails on its result instead of hanging).
struct TestBarrier {
  std::mutex mutex;
  std::condition_variable cv;
  ts::TestHook point{};
  int parties = 0;
  int arrived = 0;
};

ts::TestHook parseTestHook(const std::string& name) {
  if (name == "buffer_uses_before_waits") {
    return ts::TestHook::BufferUsesBeforeWaits;
  }
  if (name == "thread_unbind") {
    return ts::TestHook::ThreadUnbind;
  }
  throw ts::InvalidArgument("no test hook named '" + name + "'");
}

std::unique_ptr<ts::TestHookScope>& testHookScope() {
  static auto* scope = new std::unique_ptr<ts::TestHookScope>();
  return *scope;
}

// The barrier last set, so a test can see how many threads are parked at it.
std::shared_ptr<TestBarrier>& currentTestBarrier() {
  static auto* barrier = new std::shared_ptr<TestBarrier>();
  return *barrier;
}

int testBarrierArrivals() {
  const std::shared_ptr<TestBarrier> barrier = currentTestBarrier();
  if (!barrier) {
    return 0;
  }
  std::lock_guard<std::mutex> lock(barrier->mutex);
  return barrier->arrived;
}

void setTestBarrier(const std::string& pointName, int parties) {
  auto barrier = std::make_shared<TestBarrier>();
  barrier->point = parseTestHook(pointName);
  barrier->parties = parties;
  currentTestBarrier() = barrier;
  testHookScope().reset();
  testHookScope() = std::make_unique<ts::TestHookScope>([barrier](ts::TestHook point, ts::Stream*) {
    if (point != barrier->point) {
      return;
    }
    std::unique_lock<std::mutex> lock(barrier->mutex);
    if (barrier->arrived >= barrier->parties) {
      return;
    }
    ++barrier->arrived;
    barrier->cv.notify_all();
    barrier->cv.wait_for(lock, std::chrono::seconds(30),
                         [&] { return barrier->arrived >= barrier->parties; });
  });
}

} // namespace

PYBIND11_MODULE(_C, m) {
  using namespace mps_sim;
  m.doc() = "mps_threadsafe runtime bindings and the mps_sim device";

  static py::exception<ts::WorkInFlightError> workInFlight(m, "WorkInFlightError",
                                                            PyExc_RuntimeError);
  static py::exception<ts::ContractError> contract(m, "ContractError", PyExc_RuntimeError);
  static py::exception<ts::sim::MetalViolation> violation(m, "MetalViolation", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) {
        std::rethrow_exception(p);
      }
    } catch (const ts::WorkInFlightError& e) {
      py::set_error(workInFlight, e.what());
    } catch (const ts::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const ts::ContractError& e) {
      py::set_error(contract, e.what());
    } catch (const ts::sim::MetalViolation& e) {
      py::set_error(violation, e.what());
    }
  });

  m.def("set_threadsafe", [](bool on) {
    py::gil_scoped_release noGil;
    runtime().setThreadsafe(on);
  }, py::arg("on"));
  m.def("is_threadsafe", [] { return runtime().threadsafe(); });
  m.def("stats", &runtimeStats);
  m.def("synchronize", [] {
    py::gil_scoped_release noGil;
    synchronizeDeviceAndSettleFrees();
  });

  m.def("protections", [] { return protectionsDict(runtime().protections()); });
  m.def("set_protections", [](bool serialQueue, bool domains, bool crossStreamOrder,
                              bool deferredFrees) {
    py::gil_scoped_release noGil;
    runtime().setProtections({serialQueue, domains, crossStreamOrder, deferredFrees});
  }, py::arg("serial_queue"), py::arg("domains"), py::arg("cross_stream_order"),
        py::arg("deferred_frees"));

  m.def("pool_size", [] { return runtime().poolSize(); });
  m.def("current_stream_id", [] { return runtime().currentStream().id(); });
  m.def("explicit_stream_id", [] {
    ts::Stream* s = runtime().explicitStream();
    return s ? s->id() : -1;
  });
  m.def("set_current_stream", [](int id) {
    setThreadStream(id < 0 ? nullptr : &runtime().stream(id));
  }, py::arg("id"), "Makes stream `id` this thread's current stream; -1 gives it back to the thread policy.");
  m.def("release_thread_stream", [] {
    py::gil_scoped_release noGil;
    runtime().releaseThreadStream();
  });

  m.def("sim_stats", &simStats);
  m.def("set_violation_policy", [](const std::string& name) {
    simDevice().setPolicy(parsePolicy(name));
  });
  m.def("violation_policy", [] {
    switch (simDevice().policy()) {
      case ts::sim::ViolationPolicy::Throw:
        return std::string("throw");
      case ts::sim::ViolationPolicy::Count:
        return std::string("count");
      default:
        return std::string("abort");
    }
  });
  m.def("violation_messages", [] { return simDevice().violationMessages(); });
  m.def("clear_violations", [] { simDevice().clearViolations(); });
  m.def("set_race_window", [](const std::string& point, uint32_t microseconds) {
    simDevice().setRaceWindow(parseRacePoint(point), microseconds);
  }, py::arg("point"), py::arg("microseconds"));
  m.def("set_race_meeting", [](const std::string& point, uint32_t timeoutUs) {
    simDevice().setRaceMeeting(parseRacePoint(point), timeoutUs);
  }, py::arg("point"), py::arg("timeout_us"));
  m.def("_is_in_bad_fork", &inBadFork);

  m.def("empty_cache", [] {
    py::gil_scoped_release noGil;
    emptyCache();
  });
  m.def("implemented_ops", &implementedOps);
  m.def("_set_test_barrier", &setTestBarrier, py::arg("point"), py::arg("parties"),
        "Test only: the first `parties` threads reaching `point` wait for each other there.");
  m.def("_test_barrier_arrivals", &testBarrierArrivals,
        "Test only: how many threads have reached the test barrier's point so far.");
  m.def("_clear_test_hook", [] { testHookScope().reset(); });
  m.def("_saved_exchange_depth", &mps_sim::savedExchangeDepth,
        "Test only: how many stream exchanges this thread's guard stack remembers.");
}
