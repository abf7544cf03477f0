#include "command_buffer.h"

#include <algorithm>

#include "../errors.h"
#include "inside.h"
#include "messages.h"

namespace at::mps::threadsafe::sim {
namespace {

constexpr size_t kMaxReservedCommands = 1024;

constexpr const char* kMakeEncoder = "-[MTLDebugCommandBuffer computeCommandEncoder]";
constexpr const char* kSignal = "-[MTLDebugCommandBuffer encodeSignalEvent:value:]";
constexpr const char* kWait = "-[MTLDebugCommandBuffer encodeWaitForEvent:value:]";
constexpr const char* kAddHandler = "-[_MTLCommandBuffer addCompletedHandler:]";
constexpr const char* kCommit = "-[_MTLCommandBuffer commit]";
constexpr const char* kCommitAndContinue = "-[MPSCommandBuffer commitAndContinue]";
constexpr const char* kStatus = "-[_MTLCommandBuffer status]";
constexpr const char* kDispatch =
    "-[MTLDebugComputeCommandEncoder dispatchThreadgroups:threadsPerThreadgroup:]";
constexpr const char* kEndEncoding = "-[MTLDebugComputeCommandEncoder endEncoding]";

} // namespace

// ---- SimCommandBuffer ---------------------------------------------------------------------

SimCommandBuffer::SimCommandBuffer(std::shared_ptr<SimDevice::State> state,
                                   std::shared_ptr<GpuQueue> queue)
    : state_(std::move(state)), queue_(std::move(queue)) {}

std::string SimCommandBuffer::describe() const {
  return "MTLDebugCommandBuffer " + addressOf(this) + " of queue '" + queue_->label() + "'";
}

void SimCommandBuffer::requireLive(const char* method) const {
  if (released()) {
    state_->violation(ViolationKind::UseAfterRelease,
                      messageToDeallocated(method, describe(), this));
  }
}

void SimCommandBuffer::onRelease() noexcept {
  // Work never committed never runs (Metal drops it too); free it now, outside the lock,
  // as the kernels' captures may release other sim objects.
  std::vector<Command> commands;
  std::vector<CompletionHandler> handlers;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands.swap(commands_);
    handlers.swap(handlers_);
  }
}

std::shared_ptr<ComputeEncoder> SimCommandBuffer::makeComputeEncoder() {
  requireLive(kMakeEncoder);
  Inside inside(*state_, user_, RacePoint::CommandBufferCall, [this] { return describe(); });
  std::shared_ptr<SimCommandBuffer> self = weak_from_this().lock();
  if (!self) {
    // Released, reported above and carried on past (policy Count): the encoder cannot keep
    // the buffer alive; it stays valid while the buffer is in quarantine.
    self = std::shared_ptr<SimCommandBuffer>(std::shared_ptr<void>(), this);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (final_) {
    // Carrying on (Count): the encoder is made, and each of its encodes reported and dropped.
    state_->violation(ViolationKind::EncodeAfterCommit,
                      failedAssertion(kMakeEncoder,
                                      "encoding to a command buffer that has already been committed",
                                      describe()));
  }
  if (openEncoder_ != nullptr) {
    // Carrying on (Count): the new encoder becomes the open one.
    state_->violation(ViolationKind::EncoderAlreadyEncoding,
                      failedAssertion(kMakeEncoder,
                                      "A command encoder is already encoding to this command buffer",
                                      describe()));
  }
  auto encoder = handOut(state_->quarantine, new SimEncoder(state_, std::move(self)));
  openEncoder_ = encoder.get();
  return encoder;
}

void SimCommandBuffer::encodeSignalEvent(SharedEvent& event, uint64_t value) {
  encodeEvent(Command::Kind::SignalEvent, event, value, kSignal);
}

void SimCommandBuffer::encodeWaitForEvent(SharedEvent& event, uint64_t value) {
  encodeEvent(Command::Kind::WaitForEvent, event, value, kWait);
}

void SimCommandBuffer::encodeEvent(Command::Kind kind, SharedEvent& event, uint64_t value,
                                   const char* method) {
  requireLive(method);
  Inside inside(*state_, user_, RacePoint::CommandBufferCall, [this] { return describe(); });
  Command command;
  command.kind = kind;
  command.value = value;
  command.event = retainSimEvent(event); // the buffer retains the event, as Metal's does
  std::lock_guard<std::mutex> lock(mutex_);
  if (final_) {
    state_->violation(ViolationKind::EncodeAfterCommit,
                      failedAssertion(method,
                                      "encoding to a command buffer that has already been committed",
                                      describe()));
    // Carrying on (Count): a late signal still happens, alone, so whoever waits for it does
    // not hang; a late wait is dropped.
    if (kind == Command::Kind::SignalEvent) {
      Segment alone;
      alone.commands.push_back(std::move(command));
      queue_->submit(std::move(alone));
    }
    return;
  }
  if (openEncoder_ != nullptr) {
    state_->violation(
        ViolationKind::CommitWithOpenEncoder,
        failedAssertion(method, "encoding an event while a command encoder is still encoding",
                        describe()));
  }
  commands_.push_back(std::move(command));
}

void SimCommandBuffer::addCompletedHandler(CompletionHandler handler) {
  requireLive(kAddHandler);
  Inside inside(*state_, user_, RacePoint::CommandBufferCall, [this] { return describe(); });
  std::lock_guard<std::mutex> lock(mutex_);
  if (final_) {
    state_->violation(
        ViolationKind::HandlerAfterCommit,
        failedAssertion(kAddHandler, "Completed handler provided after commit call", describe()));
    // Carrying on (Count): the handler still runs once the buffer completes.
    final_->addLate(*state_, state_, std::move(handler));
    return;
  }
  handlers_.push_back(std::move(handler));
}

void SimCommandBuffer::commit() {
  submitSegment(/*keepOpen=*/false, kCommit);
}

void SimCommandBuffer::commitAndContinue() {
  submitSegment(/*keepOpen=*/true, kCommitAndContinue);
}

void SimCommandBuffer::submitSegment(bool keepOpen, const char* method) {
  requireLive(method);
  Inside inside(*state_, user_, RacePoint::CommandBufferCall, [this] { return describe(); });
  std::lock_guard<std::mutex> lock(mutex_);
  if (final_) {
    state_->violation(
        ViolationKind::CommitCommitted,
        failedAssertion(method, "commit an already committed command buffer", describe()));
    return; // carrying on (Count): there is nothing left to submit
  }
  if (openEncoder_ != nullptr) {
    // Carrying on (Count): submitted anyway; the open encoder's later encodes go to the next
    // segment, or are reported and dropped after commit.
    state_->violation(
        ViolationKind::CommitWithOpenEncoder,
        failedAssertion(method, "commit command buffer with uncommitted encoder", describe()));
  }
  Segment segment;
  segment.commands.swap(commands_);
  segment.handlers.swap(handlers_);
  // One allocation per commit instead of regrowing from nothing while the next batch is
  // encoded: batches of a stream tend to be alike.
  commands_.reserve(std::min<size_t>(segment.commands.size(), kMaxReservedCommands));
  if (!keepOpen) {
    final_ = std::make_shared<FinalCompletion>();
    segment.final = final_;
  }
  // Under the lock, so one buffer's segments reach the queue in the order of their commits.
  queue_->submit(std::move(segment));
}

CommandBufferStatus SimCommandBuffer::status() const {
  requireLive(kStatus);
  std::lock_guard<std::mutex> lock(mutex_);
  return final_ ? final_->status() : CommandBufferStatus::NotEnqueued;
}

void* SimCommandBuffer::native() {
  requireLive("-[_MTLCommandBuffer self]");
  return this;
}

void SimCommandBuffer::encodeKernel(SimEncoder& encoder, std::function<void()>&& kernel,
                                    const char* method) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (encoder.ended_) {
      state_->violation(
          ViolationKind::EncodeAfterEnd,
          failedAssertion(method, "encoding with an encoder that has ended encoding",
                          encoder.describe()));
      return; // carrying on (Count): dropped
    }
    if (final_) {
      state_->violation(ViolationKind::EncodeAfterCommit,
                        failedAssertion(method,
                                        "encoding to a command buffer that has already been "
                                        "committed",
                                        encoder.describe()));
      return; // carrying on (Count): dropped
    }
    Command& command = commands_.emplace_back();
    command.kernel = std::move(kernel);
  }
  bump(state_->counters.kernelsEncoded);
}

void SimCommandBuffer::endEncoding(SimEncoder& encoder) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (encoder.ended_) {
    state_->violation(ViolationKind::EndEncodingTwice,
                      failedAssertion(kEndEncoding, "encoder has already ended encoding",
                                      encoder.describe()));
    return;
  }
  encoder.ended_ = true;
  if (openEncoder_ == &encoder) {
    openEncoder_ = nullptr;
  }
}

// ---- SimEncoder ---------------------------------------------------------------------------

SimEncoder::SimEncoder(std::shared_ptr<SimDevice::State> state,
                       std::shared_ptr<SimCommandBuffer> buffer)
    : state_(std::move(state)), buffer_(std::move(buffer)) {}

std::string SimEncoder::describe() const {
  return "MTLDebugComputeCommandEncoder " + addressOf(this) + " of " + buffer_->describe();
}

void SimEncoder::requireLive(const char* method) const {
  if (released()) {
    state_->violation(ViolationKind::UseAfterRelease,
                      messageToDeallocated(method, describe(), this));
  }
}

void SimEncoder::dispatch(std::function<void()> kernel) {
  requireLive(kDispatch);
  Inside inside(*state_, user_, RacePoint::EncoderCall, [this] { return describe(); });
  buffer_->encodeKernel(*this, std::move(kernel), kDispatch);
}

void SimEncoder::dispatchWith(SharedObject& object, std::function<void()> kernel) {
  requireLive(kDispatch);
  Inside inside(*state_, user_, RacePoint::EncoderCall, [this] { return describe(); });
  ObjectUse use(*state_, object);
  buffer_->encodeKernel(*this, std::move(kernel), kDispatch);
}

void SimEncoder::endEncoding() {
  requireLive(kEndEncoding);
  Inside inside(*state_, user_, RacePoint::EncoderCall, [this] { return describe(); });
  buffer_->endEncoding(*this);
}

void* SimEncoder::native() {
  requireLive("-[MTLDebugComputeCommandEncoder self]");
  return this;
}

SimComputeEncoder& simEncoder(ComputeEncoder& encoder) {
  auto* sim = dynamic_cast<SimComputeEncoder*>(&encoder);
  if (sim == nullptr) {
    throw InvalidArgument("simEncoder: the encoder was not made by a SimDevice");
  }
  return *sim;
}

} // namespace at::mps::threadsafe::sim
