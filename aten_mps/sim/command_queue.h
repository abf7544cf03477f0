#pragma once

// MTLCommandQueue: makes command buffers that execute on the queue's GPU thread. Unlike the
// buffers, Metal's queue is thread-safe, and so is this one.

#include <memory>
#include <string>

#include "../backend.h"
#include "gpu_queue.h"
#include "state.h"

namespace at::mps::threadsafe::sim {

class SimCommandQueue final : public CommandQueue {
 public:
  SimCommandQueue(std::shared_ptr<SimDevice::State> state, std::string label);
  // Waits for the work committed to it, then joins its GPU thread. Buffers that outlive the
  // queue stay usable: a later commit starts a new GPU thread (Note [Job thread lifetime]).
  ~SimCommandQueue() override;

  std::shared_ptr<CommandBuffer> makeCommandBuffer() override;
  void* native() override {
    return this;
  }

 private:
  const std::shared_ptr<SimDevice::State> state_;
  const std::shared_ptr<GpuQueue> gpu_;
};

} // namespace at::mps::threadsafe::sim
