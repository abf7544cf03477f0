// Note [Switching the policy] (runtime.h): a thread that read the old policy and encodes on
// its stream after the switch never leaves that work uncommitted (issue 8.6).

#include "aten_mps/test_hooks.h"
#include "test_support.h"

namespace mpsts_test {

TEST_CASE("policy switch: work encoded on the stream of the old policy is committed",
          "[policy][issue8]") {
  SimRuntime env; // threadsafe off: everyone on the default stream
  Stream& defaultStream = env.rt().defaultStream();
  const std::thread::id mainId = std::this_thread::get_id();
  Gate readPolicy;
  Gate switched;
  TestHookScope hook([&](TestHook point, Stream*) {
    if (point == TestHook::PolicyRead && std::this_thread::get_id() != mainId &&
        !readPolicy.isOpen()) {
      readPolicy.open();
      switched.wait(); // the policy was read as "off"; the switch happens now
    }
  });
  auto ran = std::make_shared<std::atomic<bool>>(false);
  bool leftUncommitted = true;
  ThreadGroup worker;
  worker.spawn([&] {
    Stream& chosen = env.rt().currentStream();
    chosen.dispatch([&] { encodeKernel(chosen, [ran] { ran->store(true); }); }); // adaptive: open
    leftUncommitted = chosen.hasUncommittedWork();
  });
  readPolicy.wait();
  env.rt().setThreadsafe(true);
  switched.open();
  worker.joinAndRethrow();
  REQUIRE(&env.rt().defaultStream() == &defaultStream);
  REQUIRE_FALSE(leftUncommitted);
  REQUIRE(defaultStream.submittedBatch() == 1);
  defaultStream.waitCompleted(1);
  REQUIRE(ran->load());
}

} // namespace mpsts_test
