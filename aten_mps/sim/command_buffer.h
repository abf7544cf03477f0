#pragma once

// MPSCommandBuffer and MTLComputeCommandEncoder with Metal's rules checked (sim_device.h,
// "What it models"). A buffer fills one segment at a time: commitAndContinue submits it and
// starts the next, commit submits the last one and closes the buffer.
//
// The encoder keeps no state of its own but `ended_`: what it encodes goes straight into its
// buffer's open segment, so an encode is one short critical section on the buffer's mutex.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gpu_queue.h"
#include "quarantine.h"
#include "sim_device.h"
#include "state.h"

namespace at::mps::threadsafe::sim {

class SimEncoder;

class SimCommandBuffer final : public CommandBuffer,
                               public Poisonable,
                               public std::enable_shared_from_this<SimCommandBuffer> {
 public:
  SimCommandBuffer(std::shared_ptr<SimDevice::State> state, std::shared_ptr<GpuQueue> queue);

  std::shared_ptr<ComputeEncoder> makeComputeEncoder() override;
  void encodeSignalEvent(SharedEvent& event, uint64_t value) override;
  void encodeWaitForEvent(SharedEvent& event, uint64_t value) override;
  void addCompletedHandler(CompletionHandler handler) override;
  void commit() override;
  void commitAndContinue() override;
  // A property read, atomic on Metal too: checked for release, not for concurrent use.
  CommandBufferStatus status() const override;
  void* native() override;

  std::string describe() const;

 private:
  friend class SimEncoder;
  void requireLive(const char* method) const;
  void onRelease() noexcept override;
  void encodeEvent(Command::Kind kind, SharedEvent& event, uint64_t value, const char* method);
  void submitSegment(bool keepOpen, const char* method);
  // For SimEncoder, which holds its own Inside guard: encode into the open segment / end.
  void encodeKernel(SimEncoder& encoder, std::function<void()>&& kernel, const char* method);
  void endEncoding(SimEncoder& encoder);

  const std::shared_ptr<SimDevice::State> state_;
  const std::shared_ptr<GpuQueue> queue_;
  std::atomic<uint64_t> user_{0}; // Note [Thread inside]

  mutable std::mutex mutex_; // guards what follows, and every encoder's ended_
  std::vector<Command> commands_; // the open segment
  std::vector<CompletionHandler> handlers_; // for the next segment submitted
  const SimEncoder* openEncoder_ = nullptr;
  std::shared_ptr<FinalCompletion> final_; // set by commit(); null while the buffer is open
};

class SimEncoder final : public SimComputeEncoder, public Poisonable {
 public:
  SimEncoder(std::shared_ptr<SimDevice::State> state, std::shared_ptr<SimCommandBuffer> buffer);

  void dispatch(std::function<void()> kernel) override;
  void dispatchWith(SharedObject& object, std::function<void()> kernel) override;
  void endEncoding() override;
  void* native() override;

  std::string describe() const;

 private:
  friend class SimCommandBuffer;
  void requireLive(const char* method) const;

  const std::shared_ptr<SimDevice::State> state_;
  // Like Metal's, an encoder keeps its command buffer alive.
  const std::shared_ptr<SimCommandBuffer> buffer_;
  std::atomic<uint64_t> user_{0}; // Note [Thread inside]
  bool ended_ = false; // guarded by buffer_->mutex_
};

} // namespace at::mps::threadsafe::sim
