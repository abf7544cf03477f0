#include "command_queue.h"

#include "command_buffer.h"

namespace at::mps::threadsafe::sim {

SimCommandQueue::SimCommandQueue(std::shared_ptr<SimDevice::State> state, std::string label)
    : state_(std::move(state)), gpu_(std::make_shared<GpuQueue>(state_, std::move(label))) {
  state_->registerQueue(gpu_);
}

SimCommandQueue::~SimCommandQueue() {
  gpu_->drainAndStop();
}

std::shared_ptr<CommandBuffer> SimCommandQueue::makeCommandBuffer() {
  return handOut(state_->quarantine, new SimCommandBuffer(state_, gpu_));
}

} // namespace at::mps::threadsafe::sim
