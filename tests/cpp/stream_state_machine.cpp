// The stream state machine (stream.h): kernel coalescing, each SyncType with upstream's
// meaning, completion handlers and GPU errors, batches on the timeline.

#include "test_support.h"

namespace mpsts_test {
namespace {

using Catch::Matchers::Contains;

size_t index(SyncType type) {
  return static_cast<size_t>(type);
}

} // namespace

TEST_CASE("stream: consecutive kernels share one encoder (kernel coalescing)", "[stream]") {
  SimRuntime env;
  Stream& s = env.rt().defaultStream();
  std::atomic<int> ran{0};
  ComputeEncoder* first = nullptr;
  ComputeEncoder* second = nullptr;
  s.dispatch([&] {
    {
      EncoderLease lease = s.leaseEncoder();
      first = &lease.encoder();
      sim::simEncoder(lease.encoder()).dispatch([&] { ++ran; });
    }
    {
      EncoderLease lease = s.leaseEncoder();
      second = &lease.encoder();
      sim::simEncoder(lease.encoder()).dispatch([&] { ++ran; });
    }
  });
  // Coalescing also spans dispatches while the batch stays open.
  s.dispatch([&] {
    encodeKernel(s, [&] { ++ran; });
    s.synchronize(SyncType::COMMIT_AND_WAIT);
  });
  REQUIRE(first == second);
  REQUIRE(ran == 3);
  StreamStats stats = s.stats();
  REQUIRE(stats.encodersCreated == 1);
  REQUIRE(stats.encodersCoalesced == 2);
  REQUIRE(stats.opsEncoded == 3);
  REQUIRE(env.device().stats().kernelsExecuted == 3);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream: endKernelCoalescing ends the encoder, the next kernel opens a new one",
          "[stream]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  std::atomic<int> ran{0};
  s.dispatch([&] {
    encodeKernel(s, [&] { ++ran; });
    s.endKernelCoalescing();
    s.endKernelCoalescing(); // nothing open: a no-op, never a second endEncoding
    encodeKernel(s, [&] { ++ran; });
    s.synchronize(SyncType::COMMIT_AND_WAIT);
  });
  REQUIRE(ran == 2);
  REQUIRE(s.stats().encodersCreated == 2);
  REQUIRE(s.stats().encodersCoalesced == 0);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream: SyncType::NONE leaves the batch open and uncommitted", "[stream][sync]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  REQUIRE_FALSE(s.hasUncommittedWork());
  runKernel(s, [] {}, SyncType::NONE);
  REQUIRE(s.hasUncommittedWork());
  REQUIRE(s.submittedBatch() == 0);
  REQUIRE(s.openBatch() == 1);
  REQUIRE(env.device().stats().segmentsCommitted == 0);
  REQUIRE(s.stats().commits[index(SyncType::NONE)] == 1);
  // The open batch is committed later, never dropped.
  s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); });
  REQUIRE(env.device().stats().kernelsExecuted == 1);
}

TEST_CASE("stream: SyncType::COMMIT submits the batch, and commitAndContinue keeps the buffer",
          "[stream][sync]") {
  const bool commitAndContinue = GENERATE(true, false);
  CAPTURE(commitAndContinue);
  RuntimeOptions options;
  options.commitAndContinue = commitAndContinue;
  SimRuntime env(options);
  REQUIRE(env.rt().commitAndContinue() == commitAndContinue);
  Stream& s = env.rt().stream(2);
  std::atomic<int> ran{0};
  CommandBuffer* before = nullptr;
  CommandBuffer* after = nullptr;
  s.dispatch([&] {
    encodeKernel(s, [&] { ++ran; });
    before = &s.commandBuffer();
    s.synchronize(SyncType::COMMIT);
    REQUIRE_FALSE(s.hasUncommittedWork());
    after = &s.commandBuffer(); // (counts as work: callers may encode into it directly)
    encodeKernel(s, [&] { ++ran; }); // the stream goes on encoding either way
  });
  REQUIRE(s.submittedBatch() == 1);
  REQUIRE(s.openBatch() == 2);
  if (commitAndContinue) {
    REQUIRE(before == after); // upstream: COMMIT is commitAndContinue on the MPSCommandBuffer
  } else {
    REQUIRE(before != after); // upstream: flush; a fresh command buffer for the next batch
  }
  s.waitCompleted(1);
  REQUIRE(s.completedBatch() >= 1);
  REQUIRE(ran >= 1);
  s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); });
  REQUIRE(ran == 2);
  REQUIRE(s.stats().commits[index(SyncType::COMMIT)] == 1);
  REQUIRE(s.stats().commandBuffersSubmitted == 2);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream: SyncType::COMMIT_AND_WAIT returns once the batch completed",
          "[stream][sync]") {
  SimRuntime env;
  Stream& s = env.rt().stream(3);
  std::atomic<bool> done{false};
  runKernel(s, [&] {
    std::this_thread::sleep_for(50ms); // a slow kernel: returning early would be visible
    done = true;
  }, SyncType::COMMIT_AND_WAIT);
  REQUIRE(done);
  REQUIRE(s.submittedBatch() == 1);
  REQUIRE(s.completedBatch() == 1);
  REQUIRE_FALSE(s.hasUncommittedWork());
  REQUIRE(s.stats().commits[index(SyncType::COMMIT_AND_WAIT)] == 1);
}

TEST_CASE("stream: SyncType::COMMIT_AND_CONTINUE submits and keeps the command buffer open",
          "[stream][sync]") {
  SimRuntime env;
  Stream& s = env.rt().stream(4);
  std::atomic<int> ran{0};
  CommandBuffer* before = nullptr;
  CommandBuffer* after = nullptr;
  s.dispatch([&] {
    encodeKernel(s, [&] { ++ran; });
    before = &s.commandBuffer();
    s.synchronize(SyncType::COMMIT_AND_CONTINUE);
    after = &s.commandBuffer();
    REQUIRE(after->status() == CommandBufferStatus::NotEnqueued);
  });
  REQUIRE(before == after);
  REQUIRE(s.submittedBatch() == 1);
  s.waitCompleted(1);
  REQUIRE(ran == 1); // the first part ran without a further commit
  runKernel(s, [&] { ++ran; }, SyncType::COMMIT_AND_WAIT);
  REQUIRE(ran == 2);
  REQUIRE(s.completedBatch() == 2);
  REQUIRE(s.stats().commits[index(SyncType::COMMIT_AND_CONTINUE)] == 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream: SyncType::COMMIT_ADAPTIVE commits only under memory pressure",
          "[stream][sync]") {
  SimRuntime env;
  Stream& s = env.rt().stream(5);
  std::atomic<bool> pressure{false};
  std::atomic<int> probed{0};
  env.rt().setMemoryPressureProbe([&] {
    ++probed;
    return pressure.load();
  });

  SECTION("no pressure: the batch stays open") {
    runKernel(s, [] {}, SyncType::COMMIT_ADAPTIVE);
    REQUIRE(probed >= 1);
    REQUIRE_FALSE(env.rt().underMemoryPressure());
    REQUIRE(s.hasUncommittedWork());
    REQUIRE(s.submittedBatch() == 0);
  }
  SECTION("pressure: the batch is committed") {
    pressure = true;
    REQUIRE(env.rt().underMemoryPressure());
    runKernel(s, [] {}, SyncType::COMMIT_ADAPTIVE);
    REQUIRE(probed >= 1);
    REQUIRE_FALSE(s.hasUncommittedWork());
    REQUIRE(s.submittedBatch() == 1);
  }
  REQUIRE(s.stats().commits[index(SyncType::COMMIT_ADAPTIVE)] == 1);
  s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); });
  REQUIRE(env.device().stats().kernelsExecuted == 1);
}

TEST_CASE("stream: completion handlers added on the stream run once, off the committing thread",
          "[stream]") {
  SimRuntime env;
  Stream& s = env.rt().stream(6);
  std::atomic<int> calls{0};
  std::atomic<bool> kernelDoneFirst{false};
  std::atomic<bool> kernelDone{false};
  std::atomic<bool> onCommittingThread{false};
  std::atomic<int> status{-1};
  const auto caller = std::this_thread::get_id();
  s.dispatch([&] {
    encodeKernel(s, [&] { kernelDone = true; });
    s.addCompletedHandler([&](CommandBufferStatus st, const std::string&) {
      kernelDoneFirst = kernelDone.load();
      onCommittingThread = std::this_thread::get_id() == caller;
      status = static_cast<int>(st);
      ++calls;
    });
    s.synchronize(SyncType::COMMIT);
  });
  REQUIRE(eventually([&] { return calls.load() >= 1; }));
  s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); }); // a later commit adds nothing
  REQUIRE(calls == 1);
  REQUIRE(kernelDoneFirst);
  REQUIRE_FALSE(onCommittingThread);
  REQUIRE(status == static_cast<int>(CommandBufferStatus::Completed));
}

TEST_CASE("stream: a GPU error surfaces as CommandBufferError on the next COMMIT_AND_WAIT",
          "[stream][errors]") {
  SimRuntime env;
  Stream& s = env.rt().stream(7);
  auto failing = [] { throw std::runtime_error("gpu fault: page not mapped"); };

  SECTION("raised by the COMMIT_AND_WAIT that committed it, with the kernel's message") {
    try {
      runKernel(s, failing, SyncType::COMMIT_AND_WAIT);
      FAIL("COMMIT_AND_WAIT on a failing batch returned normally");
    } catch (const CommandBufferError& error) {
      REQUIRE_THAT(error.what(), Contains("gpu fault: page not mapped"));
    }
  }
  SECTION("committed earlier, raised by the next COMMIT_AND_WAIT") {
    runKernel(s, failing, SyncType::COMMIT);
    s.waitCompleted(1);
    REQUIRE_THROWS_AS(s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); }),
                      CommandBufferError);
  }
  REQUIRE(s.stats().gpuErrors == 1);
  // Reported once: the stream is usable again and the next batch is fine.
  std::atomic<bool> ran{false};
  REQUIRE_NOTHROW(runKernel(s, [&] { ran = true; }, SyncType::COMMIT_AND_WAIT));
  REQUIRE(ran);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream: batches are numbered in commit order and complete in order", "[stream]") {
  SimRuntime env;
  Stream& s = env.rt().stream(8);
  std::mutex orderMutex;
  std::vector<int> order;
  for (int batch = 1; batch <= 5; ++batch) {
    REQUIRE(s.openBatch() == static_cast<uint64_t>(batch));
    runKernel(s, [&, batch] {
      std::this_thread::sleep_for(std::chrono::milliseconds(5 - batch)); // reversed GPU times
      std::lock_guard<std::mutex> lock(orderMutex);
      order.push_back(batch);
    }, SyncType::COMMIT);
    REQUIRE(s.submittedBatch() == static_cast<uint64_t>(batch));
  }
  s.waitCompleted(5);
  REQUIRE(s.completedBatch() == 5);
  REQUIRE(s.timeline().signaledValue() >= 5);
  REQUIRE(order == std::vector<int>{1, 2, 3, 4, 5});
  REQUIRE(s.stats().commandBuffersSubmitted == 5);
}

} // namespace mpsts_test

namespace mpsts_test {

TEST_CASE("stream: a handler added to a batch left open runs when the thread's exit commits it",
          "[stream][nothing-dropped]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  std::atomic<int> handlers{0};
  std::atomic<int> kernels{0};
  Stream* used = nullptr;
  ThreadGroup group;
  group.spawn([&] {
    Stream& mine = env.rt().currentStream();
    used = &mine;
    mine.dispatch([&] {
      encodeKernel(mine, [&] { ++kernels; });
      mine.addCompletedHandler([&](CommandBufferStatus, const std::string&) { ++handlers; });
      mine.synchronize(SyncType::NONE);
    });
  }); // the thread exits with its batch open
  group.joinAndRethrow();
  REQUIRE(used->submittedBatch() == 1);
  used->waitCompleted(1);
  REQUIRE(eventually([&] { return handlers.load() == 1; }));
  REQUIRE(kernels == 1);
}

} // namespace mpsts_test
