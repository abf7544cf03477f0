#include "inside.h"

#include "messages.h"
#include "thread_token.h"

namespace at::mps::threadsafe::sim {

Inside::Inside(SimDevice::State& state, std::atomic<uint64_t>& user, RacePoint point,
               FunctionRef<std::string()> describe)
    : user_(user) {
  const uint64_t self = threadToken();
  uint64_t inside = 0;
  if (user_.compare_exchange_strong(inside, self, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
    entered_ = true;
  } else if (inside != self) {
    state.violation(ViolationKind::ConcurrentUse, concurrentUseCrash(describe()));
  }
  state.linger(point);
}

Inside::~Inside() {
  if (entered_) {
    user_.store(0, std::memory_order_release);
  }
}

ObjectUse::ObjectUse(SimDevice::State& state, SharedObject& object)
    : inside_(state, liveUser(state, object), RacePoint::SharedObjectEncode,
              [&object] { return describe(object); }) {}

std::atomic<uint64_t>& ObjectUse::liveUser(SimDevice::State& state, SharedObject& object) {
  if (object.released_.load(std::memory_order_acquire)) {
    state.violation(ViolationKind::UseAfterRelease,
                    messageToDeallocated("-[SharedObject encodeToCommandBuffer:]",
                                         describe(object), &object));
  }
  return object.user_;
}

std::string ObjectUse::describe(const SharedObject& object) {
  return "SharedObject '" + object.name_ + "' " + addressOf(&object);
}

} // namespace at::mps::threadsafe::sim
