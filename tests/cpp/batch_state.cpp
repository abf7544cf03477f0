// Note [Batch state is one word] (stream.h): a reader of "the batch of the latest work" never
// sees the number of one moment with the flag of another (issue 8.5).

#include "aten_mps/test_hooks.h"
#include "test_support.h"

namespace mpsts_test {

TEST_CASE("batch state: the latest work's batch is never stale while a commit publishes it",
          "[stream][issue8]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  Gate paused;
  Gate resume;
  TestHookScope hook([&](TestHook point, Stream* stream) {
    if (point == TestHook::CommitBeforePublish && stream == &s) {
      paused.open();
      resume.wait(); // the committing thread stops between "committed" and "published"
    }
  });
  ThreadGroup committer;
  committer.spawn([&] {
    s.dispatch([&] {
      encodeKernel(s, [] {});
      s.synchronize(SyncType::COMMIT);
    });
  });
  paused.wait();
  // The work is in batch 1, committed but not yet published. Any answer but 1 is stale: a
  // waiter would wait for batch 0 (nothing) and an allocator would reuse its buffers.
  const uint64_t latest = s.batchOfLatestWork();
  resume.open();
  committer.joinAndRethrow();
  REQUIRE(latest == 1);
  REQUIRE(s.batchOfLatestWork() == 1);
  REQUIRE(s.submittedBatch() == 1);
  REQUIRE_FALSE(s.hasUncommittedWork());
}

} // namespace mpsts_test
