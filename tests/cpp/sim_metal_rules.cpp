// The sim device's Metal object rules, each broken once (the violation, with Metal's message)
// and kept once (no violation), on raw sim objects with ViolationPolicy::Throw.

#include <barrier>
#include <future>

#include "test_support.h"

namespace mpsts_test {
namespace {

using Kind = sim::ViolationKind;
using Catch::Matchers::Contains;

struct SimQueue {
  explicit SimQueue(sim::Config config = throwingConfig()) : device(config) {}
  sim::SimDevice device;
  std::unique_ptr<CommandQueue> queue = device.makeCommandQueue("test queue");
};

// Statuses each completion handler of one command buffer reported, collected thread-safely.
struct HandlerLog {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<CommandBufferStatus> statuses;
  std::vector<std::string> errors;
  std::vector<std::thread::id> threads;

  CompletionHandler handler() {
    return [this](CommandBufferStatus status, const std::string& error) {
      std::lock_guard<std::mutex> lock(mutex);
      statuses.push_back(status);
      errors.push_back(error);
      threads.push_back(std::this_thread::get_id());
      cv.notify_all();
    };
  }
  bool waitFor(size_t count) {
    std::unique_lock<std::mutex> lock(mutex);
    return cv.wait_for(lock, 10s * slowdown(), [&] { return statuses.size() >= count; });
  }
};

// Commits `cb` and waits for it to complete; returns the status its handler saw.
CommandBufferStatus commitAndWait(CommandBuffer& cb) {
  HandlerLog log;
  cb.addCompletedHandler(log.handler());
  cb.commit();
  REQUIRE(log.waitFor(1));
  return log.statuses.front();
}

// Two threads call `a` and `b` from a common start, again and again until one of them
// raises a MetalViolation (or `rounds` pass); returns the violations' kinds. With a race
// meeting at the point both go through (Note [Race meetings]), the first round overlaps
// whatever the load: the first thread inside stays there until the second tries the object.
// Long enough never to expire on a loaded machine; a meeting ends when the contender comes.
constexpr uint32_t kMeetingUs = 60'000'000;

std::vector<Kind> race(const std::function<void()>& a, const std::function<void()>& b,
                       int rounds = 20) {
  std::vector<Kind> kinds;
  std::mutex kindsMutex;
  for (int round = 0; round < rounds && kinds.empty(); ++round) {
    std::barrier start(2);
    auto body = [&](const std::function<void()>& fn) {
      return [&] {
        start.arrive_and_wait();
        try {
          fn();
        } catch (const sim::MetalViolation& violation) {
          std::lock_guard<std::mutex> lock(kindsMutex);
          kinds.push_back(violation.kind());
        }
      };
    };
    ThreadGroup threads;
    threads.spawn(body(a));
    threads.spawn(body(b));
    threads.joinAndRethrow(20000ms, "racing threads");
  }
  return kinds;
}

} // namespace

TEST_CASE("sim rule: at most one open encoder per command buffer", "[sim][metal-rule]") {
  SimQueue sim;
  auto cb = sim.queue->makeCommandBuffer();
  auto first = cb->makeComputeEncoder();

  SECTION("a second encoder while the first is open is a violation, with Metal's message") {
    REQUIRE_VIOLATION(cb->makeComputeEncoder(), Kind::EncoderAlreadyEncoding);
    REQUIRE_THROWS_WITH(cb->makeComputeEncoder(),
                        Contains("A command encoder is already encoding to this command buffer"));
    first->endEncoding();
  }
  SECTION("a second encoder after endEncoding is fine") {
    first->endEncoding();
    std::shared_ptr<ComputeEncoder> second;
    REQUIRE_NOTHROW(second = cb->makeComputeEncoder());
    REQUIRE(second != nullptr);
    second->endEncoding();
    REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
  }
  REQUIRE(sim.device.stats().violations == sim.device.violationMessages().size());
}

TEST_CASE("sim rule: nothing is encoded, no handler added and no commit after commit",
          "[sim][metal-rule]") {
  SimQueue sim;
  auto event = sim.device.makeSharedEvent();
  Gate gpu;
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch(gpu.waiter());
  encoder->endEncoding();
  HandlerLog log;
  cb->addCompletedHandler(log.handler());
  REQUIRE_NOTHROW(cb->commit());

  auto everyLateCall = [&] {
    REQUIRE_VIOLATION(cb->makeComputeEncoder(), Kind::EncodeAfterCommit);
    REQUIRE_VIOLATION(cb->encodeSignalEvent(*event, 1), Kind::EncodeAfterCommit);
    REQUIRE_VIOLATION(cb->encodeWaitForEvent(*event, 1), Kind::EncodeAfterCommit);
    REQUIRE_VIOLATION(cb->addCompletedHandler([](CommandBufferStatus, const std::string&) {}),
                      Kind::HandlerAfterCommit);
    REQUIRE_THROWS_WITH(cb->addCompletedHandler([](CommandBufferStatus, const std::string&) {}),
                        Contains("Completed handler provided after commit call"));
    REQUIRE_VIOLATION(cb->commit(), Kind::CommitCommitted);
    REQUIRE_THROWS_WITH(cb->commit(), Contains("commit an already committed command buffer"));
    REQUIRE_VIOLATION(cb->commitAndContinue(), Kind::CommitCommitted);
  };

  SECTION("while the committed buffer is still running") {
    REQUIRE(cb->status() == CommandBufferStatus::Committed);
    everyLateCall();
    gpu.open();
    REQUIRE(log.waitFor(1));
  }
  SECTION("after it completed") {
    gpu.open();
    REQUIRE(log.waitFor(1));
    REQUIRE(eventually([&] { return cb->status() == CommandBufferStatus::Completed; }));
    everyLateCall();
  }
  // The legal sequence ran exactly once, with no violation of its own.
  REQUIRE(log.statuses == std::vector<CommandBufferStatus>{CommandBufferStatus::Completed});
  REQUIRE(sim.device.stats().kernelsExecuted == 1);
}

TEST_CASE("sim rule: endEncoding once, and an ended encoder encodes nothing",
          "[sim][metal-rule]") {
  SimQueue sim;
  sim::SharedObject graph("graph");
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  REQUIRE_NOTHROW(sim::simEncoder(*encoder).dispatch([] {}));
  REQUIRE_NOTHROW(encoder->endEncoding());

  REQUIRE_VIOLATION(encoder->endEncoding(), Kind::EndEncodingTwice);
  REQUIRE_VIOLATION(sim::simEncoder(*encoder).dispatch([] {}), Kind::EncodeAfterEnd);
  REQUIRE_VIOLATION(sim::simEncoder(*encoder).dispatchWith(graph, [] {}), Kind::EncodeAfterEnd);

  REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
  REQUIRE(sim.device.stats().kernelsExecuted == 1); // the refused kernels were not run
}

TEST_CASE("sim rule: no commit while an encoder is still encoding", "[sim][metal-rule]") {
  SimQueue sim;
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([] {});

  REQUIRE_VIOLATION(cb->commit(), Kind::CommitWithOpenEncoder);
  REQUIRE_VIOLATION(cb->commitAndContinue(), Kind::CommitWithOpenEncoder);
  REQUIRE(cb->status() == CommandBufferStatus::NotEnqueued);

  encoder->endEncoding();
  REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
}

TEST_CASE("sim rule: an encoder used by two threads at once is a violation",
          "[sim][metal-rule][race]") {
  sim::Config config = throwingConfig();
  config.raceWindowUs[static_cast<size_t>(sim::RacePoint::EncoderCall)] = 20000;
  SimQueue sim(config);

  SECTION("one encoder, two threads: ConcurrentUse") {
    auto cb = sim.queue->makeCommandBuffer();
    auto encoder = cb->makeComputeEncoder();
    auto encode = [&] { sim::simEncoder(*encoder).dispatch([] {}); };
    sim.device.setRaceMeeting(sim::RacePoint::EncoderCall, kMeetingUs);
    std::vector<Kind> kinds = race(encode, encode, 1);
    REQUIRE(kinds.size() == 1);
    REQUIRE(sim.device.stats().raceMeetings == 1);
    REQUIRE(sim.device.stats().raceMeetingTimeouts == 0);
    for (Kind kind : kinds) {
      REQUIRE(kind == Kind::ConcurrentUse);
    }
    REQUIRE(sim.device.stats().violations >= 1);
    sim.device.setRaceMeeting(sim::RacePoint::EncoderCall, 0); // endEncoding has no contender
    encoder->endEncoding();
  }
  SECTION("two encoders of two command buffers, two threads: no violation") {
    auto cbA = sim.queue->makeCommandBuffer();
    auto cbB = sim.queue->makeCommandBuffer();
    auto encoderA = cbA->makeComputeEncoder();
    auto encoderB = cbB->makeComputeEncoder();
    std::vector<Kind> kinds =
        race([&] { sim::simEncoder(*encoderA).dispatch([] {}); },
             [&] { sim::simEncoder(*encoderB).dispatch([] {}); }, 3);
    REQUIRE(kinds.empty());
    encoderA->endEncoding();
    encoderB->endEncoding();
    REQUIRE(commitAndWait(*cbA) == CommandBufferStatus::Completed);
    REQUIRE(commitAndWait(*cbB) == CommandBufferStatus::Completed);
    REQUIRE(sim.device.stats().violations == 0);
  }
}

TEST_CASE("sim rule: a command buffer used by two threads at once is a violation",
          "[sim][metal-rule][race]") {
  sim::Config config = throwingConfig();
  config.raceWindowUs[static_cast<size_t>(sim::RacePoint::CommandBufferCall)] = 20000;
  SimQueue sim(config);
  auto event = sim.device.makeSharedEvent();

  SECTION("one command buffer, two threads: ConcurrentUse") {
    auto cb = sim.queue->makeCommandBuffer();
    std::atomic<uint64_t> value{0};
    auto signal = [&] { cb->encodeSignalEvent(*event, ++value); };
    sim.device.setRaceMeeting(sim::RacePoint::CommandBufferCall, kMeetingUs);
    std::vector<Kind> kinds = race(signal, signal, 1);
    REQUIRE(kinds.size() == 1);
    REQUIRE(sim.device.stats().raceMeetings == 1);
    REQUIRE(sim.device.stats().raceMeetingTimeouts == 0);
    for (Kind kind : kinds) {
      REQUIRE(kind == Kind::ConcurrentUse);
    }
  }
  SECTION("two command buffers, two threads: no violation") {
    auto cbA = sim.queue->makeCommandBuffer();
    auto cbB = sim.queue->makeCommandBuffer();
    std::vector<Kind> kinds = race([&] { cbA->encodeSignalEvent(*event, 1); },
                                   [&] { cbB->encodeSignalEvent(*event, 2); }, 3);
    REQUIRE(kinds.empty());
    REQUIRE(sim.device.stats().violations == 0);
  }
}

TEST_CASE("sim rule: a shared object encoded by two threads at once is a violation",
          "[sim][metal-rule][race]") {
  sim::Config config = throwingConfig();
  config.raceWindowUs[static_cast<size_t>(sim::RacePoint::SharedObjectEncode)] = 20000;
  SimQueue sim(config);
  sim::SharedObject graph("layer_norm graph");
  sim::SharedObject otherGraph("softmax graph");
  auto cbA = sim.queue->makeCommandBuffer();
  auto cbB = sim.queue->makeCommandBuffer();
  auto encoderA = cbA->makeComputeEncoder();
  auto encoderB = cbB->makeComputeEncoder();

  SECTION("one shared object through two encoders: ConcurrentUse") {
    sim.device.setRaceMeeting(sim::RacePoint::SharedObjectEncode, kMeetingUs);
    std::vector<Kind> kinds = race([&] { sim::simEncoder(*encoderA).dispatchWith(graph, [] {}); },
                                   [&] { sim::simEncoder(*encoderB).dispatchWith(graph, [] {}); }, 1);
    REQUIRE(kinds.size() == 1);
    REQUIRE(sim.device.stats().raceMeetings == 1);
    REQUIRE(sim.device.stats().raceMeetingTimeouts == 0);
    for (Kind kind : kinds) {
      REQUIRE(kind == Kind::ConcurrentUse);
    }
  }
  SECTION("two shared objects: no violation") {
    std::vector<Kind> kinds =
        race([&] { sim::simEncoder(*encoderA).dispatchWith(graph, [] {}); },
             [&] { sim::simEncoder(*encoderB).dispatchWith(otherGraph, [] {}); }, 3);
    REQUIRE(kinds.empty());
    REQUIRE(sim.device.stats().violations == 0);
  }
  encoderA->endEncoding();
  encoderB->endEncoding();
}

TEST_CASE("sim rule: a released object is poisoned, so use after release is caught",
          "[sim][metal-rule]") {
  SimQueue sim;
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  ComputeEncoder* encoderAfterRelease = encoder.get();

  SECTION("while referenced, the objects work") {
    REQUIRE_NOTHROW(sim::simEncoder(*encoder).dispatch([] {}));
    encoder->endEncoding();
    REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
  }
  SECTION("an encoder used after its last reference is gone") {
    encoder->endEncoding();
    encoder.reset();
    // The quarantine keeps the memory poisoned, so these calls are defined and reported.
    REQUIRE_VIOLATION(sim::simEncoder(*encoderAfterRelease).dispatch([] {}),
                      Kind::UseAfterRelease);
    REQUIRE_VIOLATION(encoderAfterRelease->endEncoding(), Kind::UseAfterRelease);
    REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
    REQUIRE(sim.device.stats().kernelsExecuted == 0);
  }
  SECTION("a command buffer used after its last reference is gone") {
    encoder->endEncoding();
    encoder.reset(); // an encoder keeps its command buffer alive, as Metal's does
    auto lone = sim.queue->makeCommandBuffer();
    CommandBuffer* loneAfterRelease = lone.get();
    lone.reset(); // never committed: nothing else holds it
    REQUIRE_VIOLATION(loneAfterRelease->makeComputeEncoder(), Kind::UseAfterRelease);
    REQUIRE_VIOLATION(loneAfterRelease->commit(), Kind::UseAfterRelease);
  }
}

TEST_CASE("sim rule: commitAndContinue commits the work so far and keeps the buffer open",
          "[sim][metal-rule]") {
  SimQueue sim;
  std::atomic<int> ran{0};
  HandlerLog first;
  HandlerLog second;
  auto cb = sim.queue->makeCommandBuffer();

  auto encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([&] { ran += 1; });
  encoder->endEncoding();
  cb->addCompletedHandler(first.handler());
  REQUIRE_NOTHROW(cb->commitAndContinue());
  REQUIRE(first.waitFor(1)); // the first segment runs without a further commit
  REQUIRE(ran == 1);
  REQUIRE(cb->status() == CommandBufferStatus::NotEnqueued); // still open for encoding

  // Everything legal on an open buffer stays legal.
  encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([&] { ran += 10; });
  encoder->endEncoding();
  cb->addCompletedHandler(second.handler());
  REQUIRE_NOTHROW(cb->commit());
  REQUIRE(second.waitFor(1));
  REQUIRE(ran == 11);
  REQUIRE(first.statuses.size() == 1); // each handler belongs to its own segment
  REQUIRE(second.statuses == std::vector<CommandBufferStatus>{CommandBufferStatus::Completed});
  REQUIRE(sim.device.stats().segmentsCommitted == 2);
  REQUIRE(eventually([&] { return sim.device.stats().segmentsCompleted == 2; }));
  REQUIRE(sim.device.stats().violations == 0);
}

TEST_CASE("sim rule: completion handlers run on another thread, never the committing one",
          "[sim][metal-rule]") {
  SimQueue sim;
  std::thread::id kernelThread;
  HandlerLog log;
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([&] { kernelThread = std::this_thread::get_id(); });
  encoder->endEncoding();
  cb->addCompletedHandler(log.handler());
  cb->addCompletedHandler(log.handler());
  cb->commit();
  REQUIRE(log.waitFor(2));
  REQUIRE(log.statuses.size() == 2); // every handler runs, once
  for (size_t i = 0; i < log.threads.size(); ++i) {
    REQUIRE(log.threads[i] != std::this_thread::get_id());
    REQUIRE(log.statuses[i] == CommandBufferStatus::Completed);
    REQUIRE(log.errors[i].empty());
  }
  REQUIRE(kernelThread != std::this_thread::get_id()); // kernels run on the queue's GPU thread
  REQUIRE(eventually([&] { return sim.device.stats().handlersRun == 2; }));
}

TEST_CASE("sim rule: a queue runs committed work in commit order, kernels in encode order",
          "[sim][metal-rule]") {
  SimQueue sim;
  std::mutex orderMutex;
  std::vector<std::string> order;
  auto kernel = [&](std::string name, std::chrono::milliseconds gpuTime) {
    return [&, name, gpuTime] {
      std::this_thread::sleep_for(gpuTime); // widens the window for a wrong order
      std::lock_guard<std::mutex> lock(orderMutex);
      order.push_back(name);
    };
  };
  auto cbA = sim.queue->makeCommandBuffer();
  auto cbB = sim.queue->makeCommandBuffer(); // made second, committed first
  auto encoderA = cbA->makeComputeEncoder();
  sim::simEncoder(*encoderA).dispatch(kernel("A1", 0ms));
  sim::simEncoder(*encoderA).dispatch(kernel("A2", 0ms));
  encoderA->endEncoding();
  auto encoderB = cbB->makeComputeEncoder();
  sim::simEncoder(*encoderB).dispatch(kernel("B1", 30ms));
  sim::simEncoder(*encoderB).dispatch(kernel("B2", 0ms));
  encoderB->endEncoding();
  cbB->commit();
  REQUIRE(commitAndWait(*cbA) == CommandBufferStatus::Completed);
  REQUIRE(order == std::vector<std::string>{"B1", "B2", "A1", "A2"});
}

TEST_CASE("sim rule: shared events signal and wait across queues", "[sim][metal-rule]") {
  SimQueue sim;
  auto producerQueue = sim.device.makeCommandQueue("producer");
  auto event = sim.device.makeSharedEvent();
  REQUIRE(event->signaledValue() == 0);
  std::atomic<int> produced{0};
  std::atomic<int> seenByConsumer{-1};

  // The consumer is committed first and waits for value 1 on the GPU.
  auto consumer = sim.queue->makeCommandBuffer();
  consumer->encodeWaitForEvent(*event, 1);
  auto encoder = consumer->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([&] { seenByConsumer = produced.load(); });
  encoder->endEncoding();
  HandlerLog consumerLog;
  consumer->addCompletedHandler(consumerLog.handler());
  consumer->commit();

  // Until the producer signals, the consumer's kernel cannot run.
  std::this_thread::sleep_for(50ms); // gives a wrong implementation time to show itself
  REQUIRE(seenByConsumer == -1);
  REQUIRE(consumerLog.statuses.empty());

  auto producer = producerQueue->makeCommandBuffer();
  encoder = producer->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([&] {
    std::this_thread::sleep_for(20ms);
    produced = 42;
  });
  encoder->endEncoding();
  producer->encodeSignalEvent(*event, 1);
  producer->commit();

  event->waitUntilSignaled(1); // the CPU can wait on the timeline too
  REQUIRE(event->signaledValue() >= 1);
  REQUIRE(consumerLog.waitFor(1));
  REQUIRE(seenByConsumer == 42);
  // Counters are statistics, updated around the effect: wait for them to settle.
  REQUIRE(eventually([&] {
    auto stats = sim.device.stats();
    return stats.eventSignals == 1 && stats.eventWaits == 1;
  }));
  REQUIRE(sim.device.stats().violations == 0);
}

TEST_CASE("sim rule: a kernel that throws fails its command buffer with status Error",
          "[sim][metal-rule]") {
  SimQueue sim;
  HandlerLog log;
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  sim::simEncoder(*encoder).dispatch([] { throw std::runtime_error("kernel fault: out of bounds"); });
  encoder->endEncoding();
  cb->addCompletedHandler(log.handler());
  cb->commit();
  REQUIRE(log.waitFor(1));
  REQUIRE(log.statuses.front() == CommandBufferStatus::Error);
  REQUIRE_THAT(log.errors.front(), Contains("kernel fault: out of bounds"));
  REQUIRE(eventually([&] { return cb->status() == CommandBufferStatus::Error; }));
  REQUIRE(sim.device.stats().kernelsFailed == 1);

  // The queue goes on: the next command buffer runs normally.
  auto next = sim.queue->makeCommandBuffer();
  REQUIRE(commitAndWait(*next) == CommandBufferStatus::Completed);
}

TEST_CASE("sim rule: policy Count records violations and carries on", "[sim][metal-rule]") {
  sim::Config config;
  config.policy = sim::ViolationPolicy::Count;
  SimQueue sim(config);
  REQUIRE(sim.device.policy() == sim::ViolationPolicy::Count);
  auto cb = sim.queue->makeCommandBuffer();
  auto encoder = cb->makeComputeEncoder();
  encoder->endEncoding();
  REQUIRE_NOTHROW(encoder->endEncoding());
  REQUIRE(sim.device.stats().violations == 1);
  REQUIRE(sim.device.violationMessages().size() == 1);
  sim.device.clearViolations();
  REQUIRE(sim.device.violationMessages().empty());
  REQUIRE(commitAndWait(*cb) == CommandBufferStatus::Completed);
}

} // namespace mpsts_test
