// Buffer-use tracking for the allocator (buffer_uses.h): a freed buffer is reusable only once
// every stream that used it has completed that use; a stream may reuse its own at once.

#include <algorithm>

#include "test_support.h"

namespace mpsts_test {
namespace {

using Access = BufferUse::Access;

void encodeUse(Stream& stream, const void* buffer, Access access, std::function<void()> kernel,
               SyncType sync) {
  stream.dispatch([&] {
    BufferUse use{buffer, access};
    stream.useBuffers(&use, 1);
    encodeKernel(stream, std::move(kernel));
    stream.synchronize(sync);
  });
}

bool hasUseOn(const std::vector<StreamUse>& uses, const Stream& stream, uint64_t batch) {
  return std::any_of(uses.begin(), uses.end(), [&](const StreamUse& use) {
    return use.stream == &stream && use.batch == batch;
  });
}

} // namespace

TEST_CASE("buffer uses: a use depends on the other streams' last write and reads since",
          "[allocator][buffer-uses]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Stream& s3 = env.rt().stream(3);
  Stream& s4 = env.rt().stream(4);
  BufferUseTracker& tracker = env.rt().bufferUses();
  int buffer = 0;
  const BufferUse write{&buffer, Access::Write};
  const BufferUse read{&buffer, Access::Read};
  std::vector<StreamUse> deps;

  tracker.record(s1, &write, 1, 4);
  tracker.dependencies(s2, &read, 1, deps);
  REQUIRE(deps.size() == 1);
  REQUIRE(hasUseOn(deps, s1, 4));
  deps.clear();
  tracker.dependencies(s1, &read, 1, deps); // its own write: ordered by its queue
  REQUIRE(deps.empty());

  tracker.record(s2, &read, 1, 7);
  tracker.record(s3, &read, 1, 2);
  tracker.record(s3, &read, 1, 3); // one entry per stream: its latest batch
  deps.clear();
  tracker.dependencies(s1, &write, 1, deps); // a write waits for the reads since the write
  REQUIRE(deps.size() == 2);
  REQUIRE(hasUseOn(deps, s2, 7));
  REQUIRE(hasUseOn(deps, s3, 3));
  deps.clear();
  tracker.dependencies(s4, &write, 1, deps);
  REQUIRE(deps.size() == 3);
  deps.clear();
  tracker.dependencies(s4, &read, 1, deps); // a read only waits for the last write
  REQUIRE(deps.size() == 1);
  REQUIRE(hasUseOn(deps, s1, 4));

  REQUIRE(tracker.trackedBuffers() == 1);
  std::vector<StreamUse> released = tracker.release(&buffer);
  REQUIRE(released.size() == 3); // every stream that used it, once
  REQUIRE(hasUseOn(released, s1, 4));
  REQUIRE(hasUseOn(released, s2, 7));
  REQUIRE(hasUseOn(released, s3, 3));
  REQUIRE(tracker.trackedBuffers() == 0);
  REQUIRE(tracker.release(&buffer).empty());
}

TEST_CASE("pending frees: a buffer used on three streams is reusable once each completed",
          "[allocator]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Stream& s3 = env.rt().stream(3);
  Gate gpu1;
  Gate gpu2;
  Gate gpu3;
  int buffer = 0;
  encodeUse(s1, &buffer, Access::Read, gpu1.waiter(), SyncType::COMMIT);
  encodeUse(s2, &buffer, Access::Read, gpu2.waiter(), SyncType::COMMIT);
  encodeUse(s3, &buffer, Access::Read, gpu3.waiter(), SyncType::COMMIT);

  PendingFrees& frees = env.rt().pendingFrees();
  REQUIRE(frees.add(&buffer, env.rt().bufferUses().release(&buffer))); // deferred
  REQUIRE(frees.size() == 1);
  REQUIRE(frees.takeReusable(nullptr).empty());

  SECTION("completed uses only: it waits for all three consumers, not only the last") {
    gpu3.open(); // the last user finishes first
    s3.waitCompleted(1);
    REQUIRE(frees.takeReusable(nullptr).empty());
    gpu1.open();
    s1.waitCompleted(1);
    REQUIRE(frees.takeReusable(nullptr).empty());
    gpu2.open();
    s2.waitCompleted(1);
    REQUIRE(frees.takeReusable(nullptr) == std::vector<void*>{&buffer});
  }
  SECTION("a requester's own uses do not stand in its way, the others' do") {
    gpu1.open();
    s1.waitCompleted(1);
    REQUIRE(frees.takeReusable(&s1).empty()); // s2 and s3 still use it
    gpu3.open();
    s3.waitCompleted(1);
    REQUIRE(frees.takeReusable(&s1).empty()); // s2 still does
    REQUIRE(frees.takeReusable(&s2) == std::vector<void*>{&buffer}); // s2's queue orders it
    gpu2.open();
  }
  REQUIRE(frees.size() == 0);
  REQUIRE(frees.takeReusable(nullptr).empty()); // handed out once
}

TEST_CASE("pending frees: a buffer used only on the requesting stream is reusable at once",
          "[allocator]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  int buffer = 0;
  encodeUse(s1, &buffer, Access::Write, [] {}, SyncType::NONE); // not even committed
  PendingFrees& frees = env.rt().pendingFrees();
  frees.add(&buffer, env.rt().bufferUses().release(&buffer));
  REQUIRE(frees.takeReusable(&s2).empty());
  REQUIRE(frees.takeReusable(&s1) == std::vector<void*>{&buffer});
  s1.dispatch([&] { s1.synchronize(SyncType::COMMIT_AND_WAIT); });
}

TEST_CASE("pending frees: passed() is true for completed uses and the requester's own",
          "[allocator]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Gate gpu;
  encodeUse(s1, &gpu, Access::Read, gpu.waiter(), SyncType::COMMIT);
  StreamUse use{&s1, 1};
  REQUIRE_FALSE(PendingFrees::passed(use, nullptr));
  REQUIRE_FALSE(PendingFrees::passed(use, &s2));
  REQUIRE(PendingFrees::passed(use, &s1));
  gpu.open();
  s1.waitCompleted(1);
  REQUIRE(PendingFrees::passed(use, nullptr));
  REQUIRE(PendingFrees::passed(use, &s2));
}

TEST_CASE("pending frees: a buffer whose uses all completed is not deferred", "[allocator]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  int buffer = 0;
  encodeUse(s1, &buffer, Access::Read, [] {}, SyncType::COMMIT_AND_WAIT);
  encodeUse(s2, &buffer, Access::Read, [] {}, SyncType::COMMIT_AND_WAIT);
  PendingFrees& frees = env.rt().pendingFrees();
  REQUIRE_FALSE(frees.add(&buffer, env.rt().bufferUses().release(&buffer)));
  REQUIRE(frees.takeReusable(nullptr) == std::vector<void*>{&buffer});
}

} // namespace mpsts_test

namespace mpsts_test {

TEST_CASE("pending frees: waiting only on the freeing stream itself is not a deferral",
          "[allocator][issue8]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  Gate gpu;
  int own = 0;
  int shared = 0;
  encodeUse(s1, &own, Access::Write, gpu.waiter(), SyncType::COMMIT); // still running
  PendingFrees& frees = env.rt().pendingFrees();
  // Freed by s1's thread: s1 may reuse it at once, nobody waits.
  REQUIRE_FALSE(frees.add(&own, env.rt().bufferUses().release(&own), &s1));
  REQUIRE(env.rt().stats().deferredFrees == 0);
  // Used on s2 too: s1 has to wait for s2, a real deferral.
  encodeUse(s1, &shared, Access::Write, [] {}, SyncType::NONE);
  encodeUse(s2, &shared, Access::Read, gpu.waiter(), SyncType::COMMIT);
  REQUIRE(frees.add(&shared, env.rt().bufferUses().release(&shared), &s1));
  REQUIRE(env.rt().stats().deferredFrees == 1);
  gpu.open();
  env.rt().synchronizeDevice();
}

} // namespace mpsts_test
