#include "sim_device.h"

#include "../errors.h"
#include "command_queue.h"
#include "gpu_queue.h"
#include "serial_executor.h"
#include "shared_event.h"
#include "state.h"

// Note [Sim lifetime]
// Every object the device makes holds the device's State by shared_ptr, and every thread
// holds what it touches (JobThread: its own queue state; jobs: the State), so nothing dangles
// whatever is destroyed first. ~SimDevice drains each live queue and stops every thread, then
// empties the quarantine (whose parked objects, holding the State, would otherwise keep it
// alive forever); objects outliving the device keep working and restart threads as needed,
// which their own destructors (or the State's) join. A device that is leaked on purpose (the
// process-wide runtime's, see runtime.h Note [Runtime lifetime]) keeps its threads blocked
// on heap state that is never freed, and no function-local static is used by any of them,
// so process exit cannot pull anything from under them.

namespace at::mps::threadsafe::sim {

SimDevice::SimDevice(Config config) : state_(std::make_shared<State>(config)) {}

SimDevice::~SimDevice() {
  for (const std::shared_ptr<GpuQueue>& queue : state_->liveQueues()) {
    queue->drainAndStop();
  }
  state_->handlerThread.stop();
  state_->quarantine.close();
}

std::string SimDevice::name() const {
  return "sim";
}

std::unique_ptr<CommandQueue> SimDevice::makeCommandQueue(const std::string& label) {
  return std::make_unique<SimCommandQueue>(state_, label);
}

std::unique_ptr<SerialExecutor> SimDevice::makeSerialExecutor(const std::string& label) {
  return std::make_unique<SimSerialExecutor>(label);
}

std::shared_ptr<SharedEvent> SimDevice::makeSharedEvent() {
  return std::make_shared<SimSharedEvent>();
}

void SimDevice::setPolicy(ViolationPolicy policy) {
  state_->policy.store(policy, std::memory_order_relaxed);
}

ViolationPolicy SimDevice::policy() const {
  return state_->policy.load(std::memory_order_relaxed);
}

void SimDevice::setRaceWindow(RacePoint point, uint32_t microseconds) {
  const auto index = static_cast<size_t>(point);
  if (index >= kRacePointCount) {
    throw InvalidArgument("SimDevice::setRaceWindow: no such race point");
  }
  state_->raceWindowUs[index].store(microseconds, std::memory_order_relaxed);
}

void SimDevice::setRaceMeeting(RacePoint point, uint32_t timeoutUs) {
  const auto index = static_cast<size_t>(point);
  if (index >= kRacePointCount) {
    throw InvalidArgument("SimDevice::setRaceMeeting: no such race point");
  }
  state_->raceMeetingUs[index].store(timeoutUs, std::memory_order_relaxed);
}

Stats SimDevice::stats() const {
  const SimCounters& c = state_->counters;
  auto get = [](const std::atomic<uint64_t>& counter) {
    return counter.load(std::memory_order_relaxed);
  };
  Stats stats;
  stats.kernelsEncoded = get(c.kernelsEncoded);
  stats.kernelsExecuted = get(c.kernelsExecuted);
  stats.kernelsFailed = get(c.kernelsFailed);
  stats.kernelsSkipped = get(c.kernelsSkipped);
  stats.segmentsCommitted = get(c.segmentsCommitted);
  stats.segmentsCompleted = get(c.segmentsCompleted);
  stats.handlersRun = get(c.handlersRun);
  stats.eventSignals = get(c.eventSignals);
  stats.eventWaits = get(c.eventWaits);
  stats.violations = get(c.violations);
  stats.maxConcurrentQueues = get(c.maxConcurrentQueues);
  stats.raceMeetings = get(c.raceMeetings);
  stats.raceMeetingTimeouts = get(c.raceMeetingTimeouts);
  return stats;
}

std::vector<std::string> SimDevice::violationMessages() const {
  return state_->violationMessages();
}

void SimDevice::clearViolations() {
  state_->clearViolations();
}

void SimDevice::violation(ViolationKind kind, const std::string& message) {
  state_->violation(kind, message);
}

} // namespace at::mps::threadsafe::sim
