// Note [GPU errors belong to batches] (stream.h): a failed batch's error reaches what depends
// on it, on any stream, and nothing else (issue 8.2).

#include <future>
#include <utility>

#include "test_support.h"

namespace mpsts_test {
namespace {

using Catch::Matchers::Contains;
using Access = BufferUse::Access;

// On `s`: a kernel that fails, then a write of `buffer` in the same batch; committed, not waited.
void failThenWrite(Stream& s, const void* buffer) {
  const BufferUse write{buffer, Access::Write};
  s.dispatch([&] {
    s.useBuffers(&write, 1);
    encodeKernel(s, [] { throw std::runtime_error("index_select: index 100 out of range"); });
    encodeKernel(s, [] {});
    s.synchronize(SyncType::COMMIT);
  });
}

} // namespace

TEST_CASE("gpu errors: a reader on another stream of a failed batch's output gets its error",
          "[errors][issue8]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  int buffer = 0;
  failThenWrite(a, &buffer);
  const BufferUse read{&buffer, Access::Read};
  // The read may be encoded before or after A's batch completes; both must raise. On a
  // thread of its own: an error that reached a thread counts as told to that thread (Note
  // [GPU errors belong to batches]), and A's thread must not be the one told here.
  std::string readerSaw = "no error";
  ThreadGroup reader;
  reader.spawn([&] {
    try {
      b.dispatch([&] {
        b.useBuffers(&read, 1);
        encodeKernel(b, [] {});
        b.synchronize(SyncType::COMMIT_AND_WAIT);
      });
    } catch (const CommandBufferError& e) {
      readerSaw = e.what();
    }
  });
  reader.joinAndRethrow();
  REQUIRE_THAT(readerSaw, Contains("index 100 out of range") && Contains("stream 1"));
  // A's own synchronize raises it too: B seeing it did not take it from A.
  REQUIRE_THROWS_WITH(runKernel(a, [] {}, SyncType::COMMIT_AND_WAIT),
                      Contains("index 100 out of range"));
  // Told once: A's later work is clean.
  REQUIRE_NOTHROW(runKernel(a, [] {}, SyncType::COMMIT_AND_WAIT));
}

TEST_CASE("gpu errors: a batch that waited on a failed batch is failed with its cause",
          "[errors][issue8]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  Gate gpu;
  int buffer = 0;
  const BufferUse write{&buffer, Access::Write};
  // A's batch is held on the GPU until B has encoded its wait: the wait is on the GPU, and
  // only the batch dependency tells B's batch that its input failed.
  a.dispatch([&] {
    a.useBuffers(&write, 1);
    encodeKernel(a, [w = gpu.waiter()] {
      w();
      throw std::runtime_error("kernel failed");
    });
    a.synchronize(SyncType::COMMIT);
  });
  const BufferUse read{&buffer, Access::Read};
  b.dispatch([&] {
    b.useBuffers(&read, 1);
    encodeKernel(b, [] {});
    b.synchronize(SyncType::COMMIT);
  });
  REQUIRE(b.completedBatch() == 0);
  gpu.open();
  Event event;
  event.record(b);
  REQUIRE_THROWS_WITH(event.synchronize(), Contains("kernel failed") && Contains("stream 2") &&
                                               Contains("stream 1"));
}

TEST_CASE("gpu errors: unrelated streams and a pool stream's next owner never receive it",
          "[errors][issue8]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  Stream* failedOn = nullptr;
  int buffer = 0;
  ThreadGroup first;
  first.spawn([&] {
    Stream& mine = env.rt().currentStream();
    failedOn = &mine;
    failThenWrite(mine, &buffer);
    mine.waitCompleted(mine.submittedBatch()); // failed, never synchronized by its owner
  });
  first.joinAndRethrow();
  // An unrelated thread, on another stream, synchronizing its own work.
  std::string unrelated;
  std::string nextOwner;
  ThreadGroup others;
  others.spawn([&] {
    Stream& mine = env.rt().stream(5);
    try {
      runKernel(mine, [] {}, SyncType::COMMIT_AND_WAIT);
    } catch (const std::exception& e) {
      unrelated = e.what();
    }
  });
  others.joinAndRethrow();
  // The next thread bound to the same pool stream.
  others.spawn([&] {
    Stream& mine = env.rt().currentStream();
    if (&mine != failedOn) {
      nextOwner = "bound to another stream";
      return;
    }
    try {
      runKernel(mine, [] {}, SyncType::COMMIT_AND_WAIT);
    } catch (const std::exception& e) {
      nextOwner = e.what();
    }
  });
  others.joinAndRethrow();
  REQUIRE(unrelated.empty());
  REQUIRE(nextOwner.empty());
  // The failed batch keeps its error for whoever depends on it.
  REQUIRE(failedOn->failureOf(1) != nullptr);
}

} // namespace mpsts_test

namespace mpsts_test {

TEST_CASE("gpu errors: the next owner of a pool stream reading the failed output gets the error",
          "[errors][issue8]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  Stream* failedOn = nullptr;
  int buffer = 0;
  ThreadGroup first;
  first.spawn([&] {
    Stream& mine = env.rt().currentStream();
    failedOn = &mine;
    failThenWrite(mine, &buffer); // exits without synchronizing: the stream is given back
  });
  first.joinAndRethrow();
  std::string reader;
  ThreadGroup second;
  second.spawn([&] {
    Stream& mine = env.rt().currentStream();
    if (&mine != failedOn) {
      reader = "bound to another stream";
      return;
    }
    const BufferUse read{&buffer, BufferUse::Access::Read};
    try {
      mine.dispatch([&] {
        mine.useBuffers(&read, 1);
        encodeKernel(mine, [] {});
        mine.synchronize(SyncType::COMMIT_AND_WAIT);
      });
      reader = "no error";
    } catch (const CommandBufferError& e) {
      reader = e.what();
    }
  });
  second.joinAndRethrow();
  REQUIRE_THAT(reader, Contains("index 100 out of range"));
}

} // namespace mpsts_test

// Regression tests for the explorer's findings F1–F3 (docs/reliability.md "Findings"), each
// made certain by running the threads one after another (no race window needed).
namespace mpsts_test {
namespace {

// Runs `fn` on a thread of its own, to completion (the thread has exited when this returns).
void onThread(const std::function<void()>& fn) {
  ThreadGroup group;
  group.spawn(fn);
  group.joinAndRethrow();
}

} // namespace

// F1: Metal skips the rest of a failed command buffer, so a thread sharing the batch with a
// failing kernel loses its own kernels too; telling the failing thread (or its exit) must
// not settle the failure for that neighbour: an Event recorded on the stream after the
// neighbour's work must raise, never leave it reading zeros.
TEST_CASE("gpu errors: a neighbour's work lost with a failed batch of a shared stream is "
          "raised by Event.synchronize",
          "[errors][issue8][schedule]") {
  for (const bool failingThreadExits : {false, true}) {
    CAPTURE(failingThreadExits);
    RuntimeOptions options;
    options.threadsafe = true;
    options.poolSize = 1; // every thread on the one pool stream
    SimRuntime env(options);
    uint64_t neighbourRow = 0;
    Stream* shared = nullptr;
    std::promise<void> failingEncoded;
    std::promise<void> neighbourEncoded;
    std::string failingThreadSaw;
    ThreadGroup failing;
    failing.spawn([&] {
      Stream& mine = env.rt().currentStream();
      shared = &mine;
      mine.dispatch([&] {
        encodeKernel(mine, [] { throw std::runtime_error("index 100 out of range"); });
      });
      failingEncoded.set_value();
      neighbourEncoded.get_future().wait();
      if (failingThreadExits) {
        return; // its exit commits the batch and gives the stream back
      }
      try {
        mine.dispatch([&] { mine.synchronize(SyncType::COMMIT_AND_WAIT); });
      } catch (const CommandBufferError& e) {
        failingThreadSaw = e.what(); // told: its own error
      }
    });
    failingEncoded.get_future().wait();
    ThreadGroup neighbour;
    neighbour.spawn([&] {
      Stream& mine = env.rt().currentStream();
      mine.dispatch([&] { // the same open batch as the failing kernel
        encodeKernel(mine, [&] { neighbourRow = 42; });
      });
      neighbourEncoded.set_value();
    });
    neighbour.joinAndRethrow();
    failing.joinAndRethrow();
    REQUIRE(shared != nullptr);
    // Told to the failing thread itself (before the fix, the neighbour's exit had settled it
    // for the whole stream, and it was told nothing either).
    CHECK(failingThreadExits == failingThreadSaw.empty());
    // A later batch on the stream (another thread's), then a reader of the neighbour's row
    // that orders itself after everything the stream ran with an Event.
    onThread([&] { runKernel(*shared, [] {}, SyncType::COMMIT); });
    Event event;
    event.record(*shared);
    REQUIRE(neighbourRow == 0); // skipped with the failed batch, as Metal does
    REQUIRE_THROWS_WITH(event.synchronize(), Contains("index 100 out of range"));
  }
}

// F2: the failing thread exits without anyone reading its output or synchronizing: the next
// device-wide synchronize raises its error, exactly once, and the next owner of its pool
// stream never does.
TEST_CASE("gpu errors: the error of a thread that exited untold goes to the next device "
          "synchronize, once",
          "[errors][issue8][schedule]") {
  RuntimeOptions options;
  options.threadsafe = true;
  options.poolSize = 2;
  SimRuntime env(options);
  Stream* failedOn = nullptr;
  onThread([&] {
    Stream& mine = env.rt().currentStream();
    failedOn = &mine;
    runKernel(mine, [] { throw std::runtime_error("index 100 out of range"); },
              SyncType::COMMIT_AND_CONTINUE);
    mine.waitCompleted(mine.submittedBatch());
  });
  REQUIRE(failedOn->failureOf(1) != nullptr);
  REQUIRE_THROWS_WITH(env.rt().synchronizeDevice(),
                      Contains("index 100 out of range") && Contains("batch 1"));
  REQUIRE_NOTHROW(env.rt().synchronizeDevice()); // once, not sticky
  std::string nextOwner = "not bound to the failed stream";
  for (int attempt = 0; attempt < 2; ++attempt) { // the pool hands out both streams in turn
    onThread([&] {
      Stream& mine = env.rt().currentStream();
      if (&mine != failedOn) {
        return;
      }
      try {
        runKernel(mine, [] {}, SyncType::COMMIT_AND_WAIT);
        env.rt().synchronizeDevice();
        nextOwner.clear();
      } catch (const std::exception& e) {
        nextOwner = e.what();
      }
    });
  }
  REQUIRE(nextOwner.empty());
}

// F3: a dependency's wait raises inside useBuffers (its batch failed): the op is abandoned
// before it was encoded, so the uses it recorded must go with it; a use left behind names an
// open batch nothing commits, and a free of the buffer would wait for it forever.
TEST_CASE("gpu errors: useBuffers that raises leaves no use behind for a free to wait on",
          "[errors][issue8][schedule]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  int buffer = 0;
  int scratch = 0;
  failThenWrite(a, &buffer);
  a.waitCompleted(a.submittedBatch());
  const BufferUse uses[2] = {{&scratch, Access::Write}, {&buffer, Access::Read}};
  REQUIRE_THROWS_WITH(b.dispatch([&] {
    b.useBuffers(uses, 2);
    encodeKernel(b, [] {});
  }), Contains("index 100 out of range"));
  REQUIRE_FALSE(b.hasUncommittedWork());
  Counter deferred;
  PendingFrees frees(deferred);
  frees.add(&buffer, env.rt().bufferUses().release(&buffer));
  frees.add(&scratch, env.rt().bufferUses().release(&scratch));
  // Both free now: every use left was made in a batch that completed.
  REQUIRE(frees.takeReusable(nullptr).size() == 2);
}

} // namespace mpsts_test

namespace mpsts_test {

// F5 (the explorer's "reader that waited on a failed batch gets no error", docs/reliability.md
// "Findings"): thread A's batch fails and A exits untold, giving its pool stream back; the next
// thread bound to that stream (pool 1 makes the binding certain; in the explorer's pool of 8
// the least-used stream was the one A had just given back) reads A's output after an explicit
// dependency on A's batch that is not the tracker's: an Event covering it (waited on the GPU,
// from its own stream or another), wait_stream on the stream, or waitForStream naming A's
// batch. Each must raise A's error; before the fix each read zeros silently (a same-stream
// wait returned at once, and an Event's or wait_stream's GPU wait carried only the failure of
// the exact batch it named, unlike Event.synchronize on the same Event). Its own work that
// depends on nothing of A's stays clean (a pool stream never carries an error to its next
// owner). Made certain by running the threads one after another; with `completedFirst` false,
// A's failing kernel is held on the GPU until the reader's wait is encoded, so the failure is
// resolved through the recorded batch dependency, not at the wait.
TEST_CASE("gpu errors: the next owner of a pool stream that waits for the failed batch by "
          "event, wait_stream or batch number gets the error",
          "[errors][issue8][schedule]") {
  enum class Wait { EventOnOwnStream, WaitStreamOnItself, BatchNumber, EventFromOtherStream };
  const char* const names[] = {"Event.wait on its own stream", "wait_stream on itself",
                               "waitForStream(failed batch)", "Event.wait from another stream"};
  for (const Wait how : {Wait::EventOnOwnStream, Wait::WaitStreamOnItself, Wait::BatchNumber,
                         Wait::EventFromOtherStream}) {
    for (const bool completedFirst : {true, false}) {
      CAPTURE(names[static_cast<int>(how)], completedFirst);
      RuntimeOptions options;
      options.threadsafe = true;
      options.poolSize = 1; // the next thread is bound to the failed thread's stream
      SimRuntime env(options);
      Gate gpu;
      Stream* failedOn = nullptr;
      uint64_t failedBatch = 0;
      uint64_t output = 7; // what A's skipped kernel would have set to 42
      onThread([&] {
        Stream& mine = env.rt().currentStream();
        failedOn = &mine;
        mine.dispatch([&] {
          failedBatch = mine.openBatch();
          encodeKernel(mine, [hold = gpu.waiter(), completedFirst] {
            if (!completedFirst) {
              hold();
            }
            throw std::runtime_error("index 100 out of range");
          });
          encodeKernel(mine, [&output] { output = 42; });
          mine.synchronize(SyncType::COMMIT);
        });
        // Exits untold: the stream is given back.
      });
      if (completedFirst) {
        failedOn->waitCompleted(failedBatch);
        REQUIRE(failedOn->failureOf(failedBatch) != nullptr);
      }
      std::string ownWork = "not run";
      std::string reader = "no error";
      uint64_t seen = 0;
      std::promise<void> readEncoded; // set once: the read is encoded, or the wait raised
      bool signalled = false;
      auto signal = [&] {
        if (!std::exchange(signalled, true)) {
          readEncoded.set_value();
        }
      };
      std::promise<void> gpuReleased;
      Stream& other = env.rt().stream(0); // the default stream, used explicitly
      ThreadGroup next;
      next.spawn([&] {
        Stream& mine = env.rt().currentStream();
        if (&mine != failedOn) {
          reader = "bound to another stream";
          signal();
          return;
        }
        try { // its own work, depending on nothing of A's: clean
          runKernel(mine, [] {}, completedFirst ? SyncType::COMMIT_AND_WAIT : SyncType::COMMIT);
          ownWork = "clean";
        } catch (const std::exception& e) {
          ownWork = e.what();
        }
        Stream& readOn = how == Wait::EventFromOtherStream ? other : mine;
        try {
          Event event;
          switch (how) {
            case Wait::EventOnOwnStream:
              event.record(mine); // after A's batch and its own: covers both
              event.wait(mine);
              break;
            case Wait::WaitStreamOnItself:
              waitStream(mine, mine);
              break;
            case Wait::BatchNumber:
              mine.dispatch([&] { mine.waitForStream(mine, failedBatch); });
              break;
            case Wait::EventFromOtherStream:
              event.record(mine);
              event.wait(other);
              break;
          }
          // The untracked read of A's output, ordered after A's batch by the wait alone.
          readOn.dispatch([&] { encodeKernel(readOn, [&output, &seen] { seen = output; }); });
          signal();
          gpuReleased.get_future().wait();
          readOn.dispatch([&] { readOn.synchronize(SyncType::COMMIT_AND_WAIT); });
        } catch (const CommandBufferError& e) {
          reader = e.what();
          signal();
        }
      });
      readEncoded.get_future().wait();
      const bool failedBeforeRead = failedOn->completedBatch() >= failedBatch;
      gpu.open();
      gpuReleased.set_value();
      next.joinAndRethrow();
      CHECK(failedBeforeRead == completedFirst);
      CHECK(ownWork == "clean");
      CHECK(output == 7); // skipped with the failed batch, as Metal does
      CHECK_THAT(reader, Contains("index 100 out of range") && Contains("batch 1"));
    }
  }
}

} // namespace mpsts_test

namespace mpsts_test {

// Hostile review: a participant of a failed batch that is never told (the autograd engine's
// worker encodes backward kernels into the caller's batch and never synchronizes) made every
// synchronize of every thread raise the failure again, until the stream forgot the batch
// 1024 batches later: one GPU error bricked a training loop. A synchronize now raises each
// unsettled failure at most once to each thread.
TEST_CASE("gpu errors: a synchronize raises a failure once per thread even while another "
          "participant is never told",
          "[errors][issue8]") {
  RuntimeOptions options;
  options.threadsafe = false; // every thread on the default stream, one shared batch
  SimRuntime env(options);
  Stream& shared = env.rt().currentStream();
  shared.dispatch([&] {
    encodeKernel(shared, [] { throw std::runtime_error("index 100 out of range"); });
  });
  std::promise<void> workerEncoded;
  std::promise<void> release;
  ThreadGroup worker; // stays alive, untold, until the end
  worker.spawn([&] {
    Stream& mine = env.rt().currentStream();
    mine.dispatch([&] { encodeKernel(mine, [] {}); }); // the same open batch
    workerEncoded.set_value();
    release.get_future().wait();
  });
  workerEncoded.get_future().wait();
  // Told once, on this thread.
  REQUIRE_THROWS_WITH(shared.dispatch([&] { shared.synchronize(SyncType::COMMIT_AND_WAIT); }),
                      Contains("index 100 out of range"));
  // Later work of this thread is clean (before the fix: raised again, and again).
  for (int round = 0; round < 3; ++round) {
    CHECK_NOTHROW(runKernel(shared, [] {}, SyncType::COMMIT_AND_WAIT));
    CHECK_NOTHROW(env.rt().synchronizeDevice());
  }
  // Another thread was never told: its device synchronize raises it once, then never again.
  onThread([&] {
    CHECK_THROWS_WITH(env.rt().synchronizeDevice(), Contains("index 100 out of range"));
    CHECK_NOTHROW(env.rt().synchronizeDevice());
    CHECK_NOTHROW(env.rt().synchronizeDevice());
  });
  release.set_value();
  worker.joinAndRethrow();
}

} // namespace mpsts_test
