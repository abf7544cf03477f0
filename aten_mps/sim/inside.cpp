#include "inside.h"

#include "messages.h"
#include "thread_token.h"

namespace at::mps::threadsafe::sim {

// Note [Race meetings]
// A race window (linger) only makes an overlap likely: on a loaded machine the second thread
// may not get a core before the first has left. A race meeting makes it certain: the thread
// that got inside an object stays inside until a second thread has tried to enter that same
// object — the contender marks the owner word (kContended) as it reports ConcurrentUse — or
// the meeting's timeout passes (counted, so a test can tell a meeting that never happened).
// The contender marks the word only if it still holds the owner it saw, so a thread that
// entered after the owner left is never marked, and the word is never left marked with no
// owner. Thread tokens are user-space addresses: the top bit is free for the mark.
namespace {
constexpr uint64_t kContended = uint64_t{1} << 63;
} // namespace

Inside::Inside(SimDevice::State& state, std::atomic<uint64_t>& user, RacePoint point,
               FunctionRef<std::string()> describe)
    : user_(user) {
  const uint64_t self = threadToken();
  uint64_t inside = 0;
  if (user_.compare_exchange_strong(inside, self, std::memory_order_acq_rel,
                                    std::memory_order_acquire)) {
    entered_ = true;
  } else if ((inside & ~kContended) != self) {
    // Tell the thread inside that its race happened (Note [Race meetings]) before the report,
    // which may throw or abort.
    user_.compare_exchange_strong(inside, inside | kContended, std::memory_order_acq_rel,
                                  std::memory_order_relaxed);
    state.violation(ViolationKind::ConcurrentUse, concurrentUseCrash(describe()));
  }
  if (entered_) {
    state.awaitContender(point, [this] {
      return (user_.load(std::memory_order_acquire) & kContended) != 0;
    });
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
