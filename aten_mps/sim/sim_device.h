#pragma once

// The sim backend: a software device that follows Metal's documented object rules and checks
// them the way Metal's API validation layer does, so the runtime's logic runs and is tested
// on machines without an Apple GPU.
//
// What it models
// - Command buffer status NotEnqueued -> Committed -> Completed (or Error); commitAndContinue
//   commits the work so far as one segment and keeps the buffer open (MPSCommandBuffer).
// - At most one open encoder per command buffer; endEncoding once; nothing encoded, no
//   handler added and no commit after commit; no commit with an encoder still open.
// - No object is thread-safe: two threads inside one command buffer, encoder or SharedObject
//   at the same time is a violation (on Apple GPUs: a SIGSEGV in the AGX driver).
// - Released objects are poisoned and kept in a quarantine, so a use after release is caught
//   deterministically rather than being undefined behaviour.
// - Execution: committed segments run in commit order on one GPU thread per command queue;
//   their encoded kernels are real CPU work; event signals and waits act between queues;
//   completion handlers run on the queue's handler thread, never the committing one.
//
// Violations (violation.h) abort the process with Metal's message by default
// (crash-faithful), or throw, or are only counted, by setting.

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../backend.h"
#include "violation.h"

namespace at::mps::threadsafe::sim {

// Points where a thread can be made to linger inside an object (the race-window knob), so a
// race the protections prevent shows up reliably when they are switched off.
enum class RacePoint : uint8_t {
  EncoderCall, // inside an encoder method (dispatch, endEncoding)
  CommandBufferCall, // inside a command buffer method (make encoder, encode event, commit)
  SharedObjectEncode, // inside a SharedObject while its kernel is encoded
  kCount,
};

struct Config {
  ViolationPolicy policy = ViolationPolicy::Abort;
  // Microseconds to linger at each RacePoint (0: none). A thread yields at least once there.
  std::array<uint32_t, static_cast<size_t>(RacePoint::kCount)> raceWindowUs{};
  // Microseconds a thread inside an object at each RacePoint waits for a second thread to try
  // that object (0: off): Note [Race meetings] in inside.cpp.
  std::array<uint32_t, static_cast<size_t>(RacePoint::kCount)> raceMeetingUs{};
  // Released objects kept poisoned before their memory is reused.
  size_t quarantine = 4096;
};

struct Stats {
  uint64_t kernelsEncoded = 0;
  uint64_t kernelsExecuted = 0;
  uint64_t kernelsFailed = 0; // threw on the GPU thread
  // Not run: encoded after a failed kernel of the same command buffer, which Metal skips. With
  // every command buffer completed, kernelsEncoded == kernelsExecuted + kernelsFailed +
  // kernelsSkipped.
  uint64_t kernelsSkipped = 0;
  uint64_t segmentsCommitted = 0; // commit + commitAndContinue
  uint64_t segmentsCompleted = 0;
  uint64_t handlersRun = 0;
  uint64_t eventSignals = 0;
  uint64_t eventWaits = 0;
  uint64_t violations = 0;
  uint64_t maxConcurrentQueues = 0; // most GPU queues executing at the same time
  uint64_t raceMeetings = 0; // race meetings where a second thread came (Note [Race meetings])
  uint64_t raceMeetingTimeouts = 0; // race meetings where none came in time
};

// A cached object shared by every stream that the driver does not make safe to encode from
// two threads at once: an MPSGraph executable, a pipeline state. Cheap to create; name it.
class SharedObject {
 public:
  explicit SharedObject(std::string name);
  ~SharedObject();
  const std::string& name() const {
    return name_;
  }

 private:
  friend class SimComputeEncoder;
  friend class ObjectUse;
  std::string name_;
  std::atomic<uint64_t> user_{0}; // thread inside it now (0: none)
  std::atomic<bool> released_{false};
};

class SimDevice;

// The compute encoder, with the two calls ops make: encode a kernel, or encode a kernel that
// uses a SharedObject (checked for concurrent use while it is encoded).
class SimComputeEncoder : public ComputeEncoder {
 public:
  // The kernel runs on the queue's GPU thread when the segment executes; an exception it
  // throws fails the command buffer with its message.
  virtual void dispatch(std::function<void()> kernel) = 0;
  virtual void dispatchWith(SharedObject& object, std::function<void()> kernel) = 0;
};

class SimDevice : public Device {
 public:
  explicit SimDevice(Config config = {});
  ~SimDevice() override; // drains every queue, then stops its threads

  std::string name() const override;
  std::unique_ptr<CommandQueue> makeCommandQueue(const std::string& label) override;
  std::unique_ptr<SerialExecutor> makeSerialExecutor(const std::string& label) override;
  std::shared_ptr<SharedEvent> makeSharedEvent() override;

  // Settings may change between runs, not while work is in flight.
  void setPolicy(ViolationPolicy policy);
  ViolationPolicy policy() const;
  void setRaceWindow(RacePoint point, uint32_t microseconds);
  // Makes races at `point` certain (Note [Race meetings] in inside.cpp): a thread inside an
  // object there stays inside until another thread has tried to enter that object, for at
  // most `timeoutUs` (0: off).
  void setRaceMeeting(RacePoint point, uint32_t timeoutUs);

  Stats stats() const;
  // Messages of the violations seen (policies Throw and Count), oldest first.
  std::vector<std::string> violationMessages() const;
  void clearViolations();

  // Reports a violation according to the policy (aborts, throws or counts). Public so the
  // objects of this backend, which all hold the device, share one place that decides.
  void violation(ViolationKind kind, const std::string& message);

  struct State; // shared with the objects the device makes, which may outlive a test's use

 private:
  std::shared_ptr<State> state_;
};

// Downcast helper for ops: the sim encoder behind the runtime's ComputeEncoder.
SimComputeEncoder& simEncoder(ComputeEncoder& encoder);

} // namespace at::mps::threadsafe::sim
