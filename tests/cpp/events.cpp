// Cross-stream events and the device-wide synchronize (events.h, Note [Device-wide
// synchronize]).

#include "test_support.h"

namespace mpsts_test {

TEST_CASE("events: record captures the stream's work; query and synchronize see it complete",
          "[events]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  Event event;
  // Never recorded: complete, and waiting on it is a no-op.
  REQUIRE_FALSE(event.isRecorded());
  REQUIRE(event.query());
  REQUIRE_NOTHROW(event.synchronize());
  REQUIRE_NOTHROW(event.wait(env.rt().stream(2)));

  Gate gpu;
  runKernel(s, gpu.waiter(), SyncType::NONE);
  event.record(s);
  REQUIRE(event.isRecorded());
  REQUIRE(event.stream() == &s);
  // Recording commits the open batch: an uncommitted batch would never complete.
  REQUIRE_FALSE(s.hasUncommittedWork());
  REQUIRE(s.submittedBatch() == 1);
  REQUIRE_FALSE(event.query()); // the kernel is held on the GPU
  gpu.open();
  event.synchronize();
  REQUIRE(event.query());
  REQUIRE(s.completedBatch() >= 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("events: recording from inside the stream's own queue runs inline", "[events]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  Event event;
  ThreadGroup group; // re-entering the queue would deadlock: fail instead of hanging
  group.spawn([&] {
    s.dispatch([&] {
      encodeKernel(s, [] {});
      event.record(s);
    });
  });
  group.joinAndRethrow(10000ms);
  event.synchronize();
  REQUIRE(event.query());
  REQUIRE(env.device().stats().kernelsExecuted == 1);
}

TEST_CASE("events: another stream waits on the GPU for a recorded event", "[events]") {
  SimRuntime env;
  Stream& producer = env.rt().stream(1);
  Stream& consumer = env.rt().stream(2);
  std::vector<int> data(256, 0);
  std::vector<int> seen;
  Gate gpu;
  runKernel(producer, [&, hold = gpu.waiter()] {
    hold();
    std::fill(data.begin(), data.end(), 7);
  }, SyncType::NONE);
  Event event;
  event.record(producer);
  event.wait(consumer);
  runKernel(consumer, [&] { seen = data; }, SyncType::COMMIT);
  REQUIRE(consumer.submittedBatch() == 1);
  std::this_thread::sleep_for(30ms); // a consumer that does not wait would have run by now
  REQUIRE(consumer.completedBatch() == 0);
  gpu.open();
  consumer.waitCompleted(1);
  REQUIRE(seen == std::vector<int>(256, 7));
  REQUIRE(consumer.stats().crossStreamWaits >= 1);
  REQUIRE(env.device().stats().eventWaits >= 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("events: synchronize raises the recorded work's GPU error", "[events][errors]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  runKernel(s, [] { throw std::runtime_error("gpu fault in recorded work"); }, SyncType::NONE);
  Event event;
  event.record(s);
  REQUIRE_THROWS_AS(event.synchronize(), CommandBufferError);
  REQUIRE(event.query()); // it did complete, with an error
}

TEST_CASE("events: waitStream waits for every batch the producer encoded, committed or not",
          "[events]") {
  SimRuntime env;
  Stream& producer = env.rt().stream(1);
  Stream& waiter = env.rt().stream(2);
  std::vector<int> data(256, 0);
  std::vector<int> seen;
  runKernel(producer, [&] {
    std::this_thread::sleep_for(30ms); // a wrong order would read zeros
    std::fill(data.begin(), data.end(), 3);
  }, SyncType::NONE);
  REQUIRE(producer.hasUncommittedWork());
  waitStream(waiter, producer);
  // Note [Closing a batch on request]: the producer's open batch was committed first.
  REQUIRE_FALSE(producer.hasUncommittedWork());
  REQUIRE(producer.submittedBatch() == 1);
  runKernel(waiter, [&] { seen = data; }, SyncType::COMMIT_AND_WAIT);
  REQUIRE(seen == std::vector<int>(256, 3));
  REQUIRE(waiter.stats().crossStreamWaits == 1);
  // Waiting again for the same batch encodes no second wait.
  waitStream(waiter, producer);
  REQUIRE(waiter.stats().crossStreamWaits == 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("device synchronize: covers submitted and open work, never touches another "
          "thread's open command buffer from outside its queue",
          "[events][device-sync]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  Gate holding;
  Gate releaseHolder;
  Gate submitted;
  Gate releaseSubmitter;
  std::atomic<bool> submittedWorkDone{false};
  Stream* holderStream = nullptr;
  std::atomic<int> holderKernels{0};
  ThreadGroup group;
  // A thread in the middle of encoding: uncommitted work and an encoder lease out.
  group.spawn([&] {
    Stream& mine = env.rt().currentStream();
    holderStream = &mine;
    mine.dispatch([&] {
      encodeKernel(mine, [&] { ++holderKernels; });
      EncoderLease lease = mine.leaseEncoder();
      sim::simEncoder(lease.encoder()).dispatch([&] { ++holderKernels; });
      holding.open();
      releaseHolder.wait();
    });
    mine.dispatch([&] { mine.synchronize(SyncType::COMMIT_AND_WAIT); });
  });
  // A thread with submitted work still running on the GPU.
  group.spawn([&] {
    runKernel(env.rt().currentStream(), [&] {
      std::this_thread::sleep_for(50ms); // returning before it finished would be visible
      submittedWorkDone = true;
    }, SyncType::COMMIT);
    submitted.open();
    releaseSubmitter.wait();
  });
  holding.wait();
  submitted.wait();

  // The third thread synchronizes the device: it covers the holder's open batch too (Note
  // [Device-wide synchronize]), which the holder commits itself when it leaves its queue.
  bool doneAtReturn = false;
  int holderKernelsAtReturn = 0;
  ThreadGroup syncer;
  syncer.spawn([&] {
    env.rt().synchronizeDevice();
    doneAtReturn = submittedWorkDone.load();
    holderKernelsAtReturn = holderKernels.load();
  });
  // While the holder encodes, the synchronize cannot have ended its encoder: the lease is
  // still out, its batch still open.
  const bool leaseOutWhileWaiting = holderStream->leaseOut();
  const uint64_t submittedWhileWaiting = holderStream->submittedBatch();
  releaseHolder.open();
  syncer.joinAndRethrow(20000ms, "synchronizeDevice thread");
  REQUIRE(leaseOutWhileWaiting);
  REQUIRE(submittedWhileWaiting == 0);
  REQUIRE(doneAtReturn);
  REQUIRE(holderKernelsAtReturn == 2);
  REQUIRE(env.rt().stats().deviceSynchronizes == 1);

  releaseSubmitter.open();
  group.joinAndRethrow();
  REQUIRE(holderKernels == 2); // the holder's own commit found its buffer intact
  REQUIRE(env.device().stats().violations == 0);
}

} // namespace mpsts_test
