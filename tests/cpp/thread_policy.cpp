// The stream pool and the thread policy (Note [Stream ids], Note [Thread policy],
// Note [Switching the policy]).

#include <barrier>
#include <set>

#include "test_support.h"

namespace mpsts_test {

TEST_CASE("stream ids: 0 is the default stream, 1..poolSize the pool, others refused",
          "[pool]") {
  RuntimeOptions options;
  options.poolSize = 32;
  SimRuntime env(options);
  Runtime& rt = env.rt();
  REQUIRE(rt.poolSize() == 32);
  REQUIRE(&rt.stream(0) == &rt.defaultStream());
  REQUIRE(rt.defaultStream().id() == 0);
  REQUIRE(rt.stream(32).id() == 32);
  REQUIRE(&rt.stream(32) == &rt.stream(32)); // created once
  REQUIRE(rt.owns(rt.stream(32)));
  REQUIRE_THROWS_AS(rt.stream(-1), InvalidArgument);
  REQUIRE_THROWS_AS(rt.stream(33), InvalidArgument);
  for (int i = 0; i < 40; ++i) {
    int id = rt.streamFromPool().id();
    REQUIRE(id >= 1);
    REQUIRE(id <= 32);
  }
  std::vector<Stream*> created = rt.createdStreams();
  for (size_t i = 1; i < created.size(); ++i) {
    REQUIRE(created[i - 1]->id() < created[i]->id());
  }
}

TEST_CASE("thread policy: threadsafe off, every thread encodes on the default stream",
          "[pool][policy]") {
  SimRuntime env;
  REQUIRE_FALSE(env.rt().threadsafe());
  const int threads = 4;
  std::vector<Stream*> seen(threads);
  std::barrier together(threads);
  ThreadGroup group;
  for (int t = 0; t < threads; ++t) {
    group.spawn([&, t] {
      seen[t] = &env.rt().currentStream();
      together.arrive_and_wait();
      runKernel(*seen[t], [] {}, SyncType::COMMIT_AND_WAIT);
    });
  }
  group.joinAndRethrow();
  for (Stream* stream : seen) {
    REQUIRE(stream == &env.rt().defaultStream());
  }
  REQUIRE(env.rt().stats().threadsBound == 0);
  REQUIRE(env.device().stats().kernelsExecuted == threads);
}

TEST_CASE("thread policy: threadsafe on, each thread its own pool stream, sticky, given back",
          "[pool][policy]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  const int threads = 6;
  std::vector<Stream*> first(threads);
  std::vector<int> sticky(threads); // not vector<bool>: its bits share words across threads
  std::vector<int> ownersWhileBound(threads);
  std::vector<std::atomic<int>> ran(threads);
  std::barrier together(threads);
  ThreadGroup group;
  for (int t = 0; t < threads; ++t) {
    group.spawn([&, t] {
      Stream& mine = env.rt().currentStream();
      first[t] = &mine;
      together.arrive_and_wait(); // every thread is bound before any gives its stream back
      sticky[t] = &env.rt().currentStream() == &mine;
      ownersWhileBound[t] = mine.owners().load();
      // Encoded work left open at thread exit is committed, never dropped.
      runKernel(mine, [&ran, t] { ++ran[t]; }, SyncType::NONE);
    });
  }
  group.joinAndRethrow();
  std::set<int> ids;
  for (int t = 0; t < threads; ++t) {
    CAPTURE(t);
    REQUIRE(first[t]->id() >= 1);
    REQUIRE(first[t]->id() <= env.rt().poolSize());
    REQUIRE(sticky[t]);
    REQUIRE(ownersWhileBound[t] == 1);
    ids.insert(first[t]->id());
    // Released at exit: no owner left, open work submitted...
    REQUIRE(first[t]->owners().load() == 0);
    REQUIRE_FALSE(first[t]->hasUncommittedWork());
    REQUIRE(first[t]->submittedBatch() >= 1);
    // ...and it runs.
    first[t]->waitCompleted(first[t]->submittedBatch());
    REQUIRE(ran[t] == 1);
  }
  REQUIRE(ids.size() == threads);
  RuntimeStats stats = env.rt().stats();
  REQUIRE(stats.threadsafe);
  REQUIRE(stats.threadsBound == threads);
  REQUIRE(stats.threadsReleased == threads);
  REQUIRE(stats.sharedStreamBindings == 0);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("thread policy: a stream given back at thread exit is bound again by a new thread",
          "[pool][policy]") {
  RuntimeOptions options;
  options.threadsafe = true;
  options.poolSize = 2;
  SimRuntime env(options);
  // Far more threads over time than streams, none sharing: each one exits before the next.
  for (int generation = 0; generation < 10; ++generation) {
    ThreadGroup group;
    group.spawn([&] { runKernel(env.rt().currentStream(), [] {}, SyncType::COMMIT); });
    group.joinAndRethrow();
  }
  env.rt().synchronizeDevice();
  RuntimeStats stats = env.rt().stats();
  REQUIRE(stats.sharedStreamBindings == 0);
  REQUIRE(stats.threadsReleased >= 10);
  REQUIRE(env.device().stats().kernelsExecuted == 10);
}

TEST_CASE("thread policy: an explicitly set stream wins over the policy", "[pool][policy]") {
  const bool threadsafe = GENERATE(false, true);
  CAPTURE(threadsafe);
  RuntimeOptions options;
  options.threadsafe = threadsafe;
  SimRuntime env(options);
  Stream* guarded = nullptr;
  Stream* explicitOne = nullptr;
  Stream* restored = nullptr;
  Stream* explicitAfter = &env.rt().defaultStream();
  ThreadGroup group;
  group.spawn([&] {
    env.rt().setCurrentStream(&env.rt().stream(7));
    guarded = &env.rt().currentStream();
    explicitOne = env.rt().explicitStream();
    runKernel(*guarded, [] {}, SyncType::COMMIT_AND_WAIT);
    env.rt().setCurrentStream(nullptr);
    restored = &env.rt().currentStream();
    explicitAfter = env.rt().explicitStream();
  });
  group.joinAndRethrow();
  REQUIRE(guarded == &env.rt().stream(7));
  REQUIRE(explicitOne == &env.rt().stream(7));
  REQUIRE(explicitAfter == nullptr);
  if (threadsafe) {
    REQUIRE(restored->id() >= 1);
  } else {
    REQUIRE(restored == &env.rt().defaultStream());
  }
  REQUIRE(env.rt().stream(7).stats().opsEncoded == 1);
}

TEST_CASE("thread policy: a stream of another runtime is refused with InvalidArgument",
          "[pool][policy]") {
  SimRuntime env;
  SimRuntime other;
  REQUIRE_THROWS_AS(env.rt().setCurrentStream(&other.rt().stream(1)), InvalidArgument);
  REQUIRE_THROWS_AS(env.rt().setCurrentStream(&other.rt().defaultStream()), InvalidArgument);
  REQUIRE(env.rt().explicitStream() == nullptr);
  REQUIRE(&env.rt().currentStream() == &env.rt().defaultStream());
  REQUIRE(env.rt().owns(env.rt().stream(1)));
  REQUIRE_FALSE(env.rt().owns(other.rt().stream(1)));
  // A stream refuses to wait for a stream of another device (Stream::waitForStream).
  Stream& mine = env.rt().stream(1);
  REQUIRE_THROWS_AS(mine.dispatch([&] { mine.waitForStream(other.rt().stream(1), 1); }),
                    InvalidArgument);
}

TEST_CASE("thread policy: more threads than pool streams share streams safely",
          "[pool][policy][threads]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  const int threads = 40; // > 32 pool streams
  const int kernelsPerThread = 20;
  std::atomic<int> ran{0};
  std::barrier bound(threads + 1); // the test thread looks at the bindings in between
  std::barrier resume(threads + 1);
  ThreadGroup group;
  for (int t = 0; t < threads; ++t) {
    group.spawn([&] {
      Stream& mine = env.rt().currentStream();
      bound.arrive_and_wait();
      resume.arrive_and_wait();
      for (int i = 0; i < kernelsPerThread; ++i) {
        runKernel(mine, [&] { ++ran; },
                  i % 5 == 4 ? SyncType::COMMIT_AND_WAIT : SyncType::COMMIT);
      }
    });
  }
  bound.arrive_and_wait();
  int owners = 0;
  int maxOwners = 0;
  for (int id = 1; id <= env.rt().poolSize(); ++id) {
    int n = env.rt().stream(id).owners().load();
    owners += n;
    maxOwners = std::max(maxOwners, n);
  }
  RuntimeStats whileBound = env.rt().stats();
  resume.arrive_and_wait();
  auto errors = group.join();
  env.rt().synchronizeDevice();
  REQUIRE(errors.empty());
  REQUIRE(owners == threads);
  REQUIRE(maxOwners == 2); // the least-bound stream is shared: no stream gets a third thread
  REQUIRE(whileBound.sharedStreamBindings == static_cast<uint64_t>(threads - env.rt().poolSize()));
  REQUIRE(ran == threads * kernelsPerThread);
  REQUIRE(env.device().stats().kernelsExecuted == env.device().stats().kernelsEncoded);
  REQUIRE(env.device().stats().violations == 0);
  REQUIRE(env.rt().stats().maxActiveStreams >= 2);
}

TEST_CASE("policy switch: refused while another thread holds uncommitted work",
          "[pool][policy][switch]") {
  RuntimeOptions options;
  options.threadsafe = true;
  SimRuntime env(options);
  Gate encoded;
  Gate commitNow;
  Gate committed;
  Gate exitNow;
  std::atomic<bool> kernelDone{false};
  Stream* holderStream = nullptr;
  ThreadGroup group;
  group.spawn([&] {
    Stream& mine = env.rt().currentStream();
    holderStream = &mine;
    runKernel(mine, [&] {
      std::this_thread::sleep_for(50ms); // a drain that does not wait would finish early
      kernelDone = true;
    }, SyncType::NONE);
    encoded.open();
    commitNow.wait();
    mine.dispatch([&] { mine.synchronize(SyncType::COMMIT); });
    committed.open();
    exitNow.wait();
  });
  encoded.wait();
  REQUIRE(holderStream->hasUncommittedWork());
  REQUIRE_THROWS_AS(env.rt().setThreadsafe(false), WorkInFlightError);
  REQUIRE(env.rt().threadsafe()); // unchanged
  REQUIRE(holderStream->hasUncommittedWork()); // and the holder's work was left alone

  commitNow.open();
  committed.wait();
  REQUIRE_NOTHROW(env.rt().setThreadsafe(false));
  // The switch drained: everything submitted before it has completed.
  REQUIRE(kernelDone);
  for (Stream* stream : env.rt().createdStreams()) {
    CAPTURE(stream->id());
    REQUIRE(stream->completedBatch() == stream->submittedBatch());
  }
  REQUIRE_FALSE(env.rt().threadsafe());
  exitNow.open();
  group.joinAndRethrow();

  // Threads now follow the new policy.
  Stream* after = nullptr;
  ThreadGroup later;
  later.spawn([&] { after = &env.rt().currentStream(); });
  later.joinAndRethrow();
  REQUIRE(after == &env.rt().defaultStream());
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("policy switch: refused while another thread holds an encoder lease",
          "[pool][policy][switch]") {
  SimRuntime env; // threadsafe off: switching on
  Gate leased;
  Gate release;
  ThreadGroup group;
  group.spawn([&] {
    Stream& s = env.rt().currentStream();
    s.dispatch([&] {
      EncoderLease lease = s.leaseEncoder();
      leased.open();
      release.wait();
      sim::simEncoder(lease.encoder()).dispatch([] {});
    });
    s.dispatch([&] { s.synchronize(SyncType::COMMIT); });
  });
  leased.wait();
  // The switch must refuse, not wait for the holder (which here waits for the test): run it
  // on a thread, and if it blocks, free the holder so the run goes on, and fail.
  std::atomic<bool> returned{false};
  std::atomic<bool> refused{false};
  ThreadGroup switcher;
  switcher.spawn([&] {
    try {
      env.rt().setThreadsafe(true);
    } catch (const WorkInFlightError&) {
      refused = true;
    }
    returned = true;
  });
  bool returnedWhileHeld = eventually([&] { return returned.load(); }, 2000ms);
  release.open();
  switcher.joinAndRethrow();
  group.joinAndRethrow();
  INFO("setThreadsafe blocked on the default stream, whose lease another thread holds, "
       "instead of raising WorkInFlightError");
  REQUIRE(returnedWhileHeld);
  REQUIRE(refused);
  env.rt().setThreadsafe(false); // back to the start: the test switches on below
  REQUIRE_FALSE(env.rt().threadsafe());
  REQUIRE_NOTHROW(env.rt().setThreadsafe(true));
  REQUIRE(env.rt().threadsafe());
  REQUIRE(env.device().stats().kernelsExecuted == 1); // drained before switching
}

TEST_CASE("policy switch: with no work in flight it drains and switches both ways",
          "[pool][policy][switch]") {
  SimRuntime env;
  std::atomic<int> ran{0};
  runKernel(env.rt().defaultStream(), [&] {
    std::this_thread::sleep_for(30ms);
    ++ran;
  }, SyncType::COMMIT);
  REQUIRE_NOTHROW(env.rt().setThreadsafe(true));
  REQUIRE(ran == 1); // submitted work finished before the switch returned
  REQUIRE(env.rt().threadsafe());
  REQUIRE_NOTHROW(env.rt().setThreadsafe(true)); // idempotent
  REQUIRE_NOTHROW(env.rt().setThreadsafe(false));
  REQUIRE_FALSE(env.rt().threadsafe());
  REQUIRE(env.rt().stats().threadsafe == false);
}

} // namespace mpsts_test
