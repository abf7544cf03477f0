// Note [Unordered writes are a set] (buffer_uses.h): writes to one buffer from several streams
// are all waited for by a later reader, whatever the interleaving of their bookkeeping
// (issue 8.1: eight threads filling disjoint rows of one tensor lost rows).

#include <array>

#include "aten_mps/test_hooks.h"
#include "test_support.h"

namespace mpsts_test {
namespace {

using Access = BufferUse::Access;

bool hasUse(const std::vector<StreamUse>& uses, const Stream& stream, uint64_t batch) {
  for (const StreamUse& use : uses) {
    if (use.stream == &stream && use.batch == batch) {
      return true;
    }
  }
  return false;
}

} // namespace

TEST_CASE("buffer uses: writes not yet ordered with each other are all waited for",
          "[buffer-uses][issue8]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Stream& s3 = env.rt().stream(3);
  BufferUseTracker& tracker = env.rt().bufferUses();
  int buffer = 0;
  const BufferUse write{&buffer, Access::Write};
  const BufferUse read{&buffer, Access::Read};
  std::vector<StreamUse> deps1;
  std::vector<StreamUse> deps2;
  std::vector<StreamUse> deps;

  // Two writers record before either has waited: the second sees the first (one atomic step).
  tracker.dependOnAndRecord(s1, &write, 1, 1, deps1);
  tracker.dependOnAndRecord(s2, &write, 1, 1, deps2);
  REQUIRE(deps1.empty());
  REQUIRE(deps2.size() == 1);
  REQUIRE(hasUse(deps2, s1, 1));
  // Neither has settled: a reader waits for both.
  tracker.dependencies(s3, &read, 1, deps);
  REQUIRE(deps.size() == 2);
  REQUIRE(hasUse(deps, s1, 1));
  REQUIRE(hasUse(deps, s2, 1));

  // s2's write waited for s1's batch 1: it is the ordering point for it.
  tracker.settle(s2, &write, 1, 1, deps2);
  deps.clear();
  tracker.dependencies(s3, &read, 1, deps);
  REQUIRE(deps.size() == 1);
  REQUIRE(hasUse(deps, s2, 1));

  // s1's write was really encoded in batch 2 (a close request committed batch 1 during its
  // waits): s2 waited for batch 1 only, so s1's write is unordered with s2's and stays.
  tracker.settle(s1, &write, 1, 2, deps1);
  deps.clear();
  tracker.dependencies(s3, &read, 1, deps);
  REQUIRE(deps.size() == 2);
  REQUIRE(hasUse(deps, s1, 2));
  REQUIRE(hasUse(deps, s2, 1));
  REQUIRE(tracker.release(&buffer).size() == 2);
}

TEST_CASE("buffer uses: two streams writing one buffer at once are both ordered before a reader",
          "[buffer-uses][issue8]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Stream& reader = env.rt().stream(3);
  // One buffer, two disjoint halves (rows), written from two streams.
  auto rows = std::make_shared<std::array<std::atomic<int>, 2>>();
  const BufferUse write{rows.get(), Access::Write};
  const BufferUse read{rows.get(), Access::Read};

  Gate firstAtHook; // writer 1 has read its dependencies (and, fixed, recorded its write)
  Gate secondAtHook; // writer 2 too
  Gate firstDone; // writer 1 has encoded and committed its kernel
  TestHookScope hook([&](TestHook point, Stream* stream) {
    if (point != TestHook::BufferUsesBeforeWaits) {
      return;
    }
    if (stream == &s1) {
      firstAtHook.open();
      secondAtHook.wait();
    } else if (stream == &s2) {
      secondAtHook.open();
      firstDone.wait();
    }
  });
  Gate gpu; // holds writer 1's kernel on the GPU, so writer 2 has to wait for it there
  auto writeRow = [&](Stream& s, int row) {
    s.dispatch([&] {
      s.useBuffers(&write, 1);
      encodeKernel(s, [rows, row, hold = gpu.waiter()] {
        if (row == 0) {
          hold();
        }
        (*rows)[static_cast<size_t>(row)].store(row + 1);
      });
      s.synchronize(SyncType::COMMIT);
    });
  };
  ThreadGroup writers;
  writers.spawn([&] {
    writeRow(s1, 0);
    firstDone.open();
  });
  firstAtHook.wait(); // writer 2 reads the history only after writer 1 has read it
  writers.spawn([&] { writeRow(s2, 1); });
  writers.joinAndRethrow();
  const uint64_t secondWaits = s2.stats().crossStreamWaits;
  gpu.open();

  // The reader comes after join(): it must see both rows.
  std::array<int, 2> seen{};
  reader.dispatch([&] {
    reader.useBuffers(&read, 1);
    encodeKernel(reader, [rows, &seen] {
      seen[0] = (*rows)[0].load();
      seen[1] = (*rows)[1].load();
    });
    reader.synchronize(SyncType::COMMIT_AND_WAIT);
  });
  // Writer 2 saw writer 1's write in the same step it recorded its own, so it waited for it
  // on the GPU; with a single "last write" overwritten by writer 2, nobody waited for row 0.
  REQUIRE(secondWaits == 1);
  REQUIRE(seen[0] == 1);
  REQUIRE(seen[1] == 2);
  REQUIRE(env.device().stats().violations == 0);
}

} // namespace mpsts_test
