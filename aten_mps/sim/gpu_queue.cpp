#include "gpu_queue.h"

#include <cstdio>
#include <exception>

#include "../schedule.h"

namespace at::mps::threadsafe::sim {
namespace {

// A handler that throws would take the process down on Metal's handler thread; here it is
// reported and the remaining handlers still run.
void runHandler(SimDevice::State& state, const CompletionHandler& handler,
                CommandBufferStatus status, const std::string& error) {
  try {
    handler(status, error);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sim device: a completion handler threw: %s\n", e.what());
    std::fflush(stderr);
  } catch (...) {
    std::fprintf(stderr, "sim device: a completion handler threw\n");
    std::fflush(stderr);
  }
  bump(state.counters.handlersRun);
}

std::string describeException(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "a kernel threw an exception that is not a std::exception";
  }
}

} // namespace

void FinalCompletion::addLate(SimDevice::State& state, std::shared_ptr<SimDevice::State> owner,
                              CompletionHandler handler) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!finished_) {
    late_.push_back(std::move(handler));
    return;
  }
  const CommandBufferStatus status = finalStatus_;
  std::string error = error_;
  lock.unlock();
  state.handlerThread.post(
      [owner = std::move(owner), handler = std::move(handler), status, error = std::move(error)] {
        runHandler(*owner, handler, status, error);
      });
}

void FinalCompletion::finish(SimDevice::State& state, CommandBufferStatus status,
                             const std::string& error) {
  std::vector<CompletionHandler> late;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    finalStatus_ = status;
    error_ = error;
    late.swap(late_);
  }
  for (const CompletionHandler& handler : late) {
    runHandler(state, handler, status, error);
  }
}

GpuQueue::GpuQueue(std::shared_ptr<SimDevice::State> state, std::string label)
    : state_(std::move(state)), label_(std::move(label)) {}

GpuQueue::~GpuQueue() {
  gpuThread_.stop();
  handlerThread_->stop();
}

void GpuQueue::submit(Segment segment) {
  bump(state_->counters.segmentsCommitted);
  gpuThread_.post([state = state_, handlers = handlerThread_,
                   segment = std::move(segment)]() mutable { execute(state, handlers, segment); });
}

void GpuQueue::drainAndStop() {
  gpuThread_.stop();
  handlerThread_->stop();
}

void GpuQueue::execute(const std::shared_ptr<SimDevice::State>& state,
                       const std::shared_ptr<JobThread>& handlers, Segment& segment) {
  SimCounters& counters = state->counters;
  state->enterExecution();
  std::exception_ptr failure;
  for (Command& command : segment.commands) {
    switch (command.kind) {
      case Command::Kind::Kernel:
        // After a failure the rest of the segment's kernels are skipped, but its signals
        // still happen (below), so nothing waiting on this segment hangs.
        if (failure) {
          bump(counters.kernelsSkipped);
          break;
        }
        racePoint(SchedulePoint::GpuKernel);
        try {
          command.kernel();
          bump(counters.kernelsExecuted);
        } catch (...) {
          failure = std::current_exception();
          bump(counters.kernelsFailed);
        }
        break;
      case Command::Kind::SignalEvent:
        command.event->signal(command.value);
        bump(counters.eventSignals);
        break;
      case Command::Kind::WaitForEvent:
        // A queue blocked on an event is not executing: leave the concurrency count so
        // maxConcurrentQueues measures real overlap, not queues waiting on each other.
        if (command.event->signaledValue() < command.value) {
          state->leaveExecution();
          command.event->waitUntilSignaled(command.value);
          state->enterExecution();
        }
        bump(counters.eventWaits);
        break;
    }
  }
  state->leaveExecution();
  // Kernels (and what they captured) die on the GPU thread, before the handlers run.
  segment.commands.clear();

  const CommandBufferStatus status =
      failure ? CommandBufferStatus::Error : CommandBufferStatus::Completed;
  std::string error = failure ? describeException(failure) : std::string();
  if (segment.final) {
    segment.final->setStatus(status);
  }
  racePoint(SchedulePoint::GpuComplete);
  bump(counters.segmentsCompleted);
  if (segment.handlers.empty() && !segment.final) {
    return;
  }
  handlers->post([state, handlers = std::move(segment.handlers),
                  final = std::move(segment.final), status, error = std::move(error)] {
    for (const CompletionHandler& handler : handlers) {
      runHandler(*state, handler, status, error);
    }
    if (final) {
      final->finish(*state, status, error);
    }
  });
}

} // namespace at::mps::threadsafe::sim
