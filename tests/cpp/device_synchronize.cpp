// Note [Device-wide synchronize] (runtime.h): synchronize covers work other threads left in
// their open batch, e.g. a thread Python's join() has returned from but whose thread_local
// bookkeeping has not given its stream back yet (issue 8.4).

#include "aten_mps/test_hooks.h"
#include "test_support.h"

namespace mpsts_test {

TEST_CASE("device synchronize: covers a parked thread's uncommitted work", "[sync][issue8]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  auto ran = std::make_shared<std::atomic<bool>>(false);
  Gate encoded;
  Gate leave;
  ThreadGroup worker;
  worker.spawn([&] {
    Stream& mine = env.rt().currentStream();
    mine.dispatch([&] { encodeKernel(mine, [ran] { ran->store(true); }); }); // left open
    encoded.open();
    leave.wait(); // done with the device, thread_local destructors not run yet
  });
  encoded.wait();
  env.rt().synchronizeDevice();
  const bool coveredBySynchronize = ran->load();
  leave.open();
  worker.joinAndRethrow();
  REQUIRE(coveredBySynchronize);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("device synchronize: covers an exiting thread whose stream is not given back yet",
          "[sync][issue8]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  auto ran = std::make_shared<std::atomic<bool>>(false);
  Gate atExit;
  Gate giveBack;
  Stream* workerStream = nullptr;
  TestHookScope hook([&](TestHook point, Stream* stream) {
    if (point == TestHook::ThreadUnbind && stream == workerStream) {
      atExit.open();
      giveBack.wait(); // the thread's function returned; its stream is not given back yet
    }
  });
  ThreadGroup worker;
  worker.spawn([&] {
    Stream& mine = env.rt().currentStream();
    workerStream = &mine;
    mine.dispatch([&] { encodeKernel(mine, [ran] { ran->store(true); }); });
  });
  atExit.wait();
  env.rt().synchronizeDevice();
  const bool coveredBySynchronize = ran->load();
  giveBack.open();
  worker.joinAndRethrow();
  REQUIRE(coveredBySynchronize);
  REQUIRE(env.device().stats().violations == 0);
}

} // namespace mpsts_test
