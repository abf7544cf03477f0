// Cross-stream ordering of data handed between streams (Stream::useBuffers, buffer_uses.h):
// real data written by one stream's kernels and read by another's. Each rule is also run with
// the crossStreamOrder protection off, where the wrong order must show: the proof that the
// ordered runs could fail. Kernel sleeps only widen the window a wrong order needs.

#include <algorithm>
#include <barrier>

#include "test_support.h"

namespace mpsts_test {
namespace {

using Access = BufferUse::Access;

RuntimeOptions ordering(bool on) {
  RuntimeOptions options;
  options.protections.crossStreamOrder = on;
  return options;
}

// Encodes on `stream`, after declaring its use of `buffer`.
void encodeUse(Stream& stream, const void* buffer, Access access, std::function<void()> kernel,
               SyncType sync) {
  stream.dispatch([&] {
    BufferUse use{buffer, access};
    stream.useBuffers(&use, 1);
    encodeKernel(stream, std::move(kernel));
    stream.synchronize(sync);
  });
}

} // namespace

TEST_CASE("cross-stream order: a read sees another stream's uncommitted write",
          "[cross-stream]") {
  const bool protectionOn = GENERATE(true, false);
  CAPTURE(protectionOn);
  SimRuntime env(ordering(protectionOn));
  Stream& writer = env.rt().stream(1);
  Stream& reader = env.rt().stream(2);
  std::vector<int> buffer(1024, 0);
  std::vector<int> seen;

  encodeUse(writer, buffer.data(), Access::Write, [&] {
    std::this_thread::sleep_for(30ms); // a reader that does not wait runs first
    for (size_t i = 0; i < buffer.size(); ++i) {
      buffer[i] = static_cast<int>(i) + 1;
    }
  }, SyncType::NONE);
  encodeUse(reader, buffer.data(), Access::Read, [&] { seen = buffer; }, SyncType::COMMIT_AND_WAIT);

  std::vector<int> expected(buffer.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    expected[i] = static_cast<int>(i) + 1;
  }
  if (protectionOn) {
    REQUIRE(seen == expected);
    REQUIRE(reader.stats().crossStreamWaits == 1);
    REQUIRE(env.device().stats().violations == 0);
  } else {
    REQUIRE(seen == std::vector<int>(buffer.size(), 0)); // stale: the write had not run
  }
  writer.dispatch([&] { writer.synchronize(SyncType::COMMIT_AND_WAIT); });
}

TEST_CASE("cross-stream order: a read waits for a write whose stream is busy in another thread",
          "[cross-stream][threads]") {
  SimRuntime env;
  Stream& writer = env.rt().stream(1);
  Stream& reader = env.rt().stream(2);
  std::vector<int> buffer(1024, 0);
  std::vector<int> seen;
  Gate written;
  ThreadGroup group;
  group.spawn([&] {
    writer.dispatch([&] {
      BufferUse use{buffer.data(), Access::Write};
      writer.useBuffers(&use, 1);
      encodeKernel(writer, [&] {
        std::this_thread::sleep_for(20ms);
        std::fill(buffer.begin(), buffer.end(), 5);
      });
      written.open();
      // Still inside the writer's queue: the reader cannot commit this batch itself and must
      // ask (Note [Closing a batch on request]); this dispatch commits it on its way out.
      std::this_thread::sleep_for(30ms);
    });
  });
  group.spawn([&] {
    written.wait();
    encodeUse(reader, buffer.data(), Access::Read, [&] { seen = buffer; },
              SyncType::COMMIT_AND_WAIT);
  });
  group.joinAndRethrow();
  REQUIRE(seen == std::vector<int>(buffer.size(), 5));
  REQUIRE(writer.submittedBatch() == 1);
  REQUIRE(reader.stats().crossStreamWaits == 1);
  REQUIRE(writer.stats().closeRequestsServed == 1); // committed because the reader needed it
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("cross-stream order: a write waits for the reads made on other streams",
          "[cross-stream]") {
  const bool protectionOn = GENERATE(true, false);
  CAPTURE(protectionOn);
  SimRuntime env(ordering(protectionOn));
  Stream& reader = env.rt().stream(1);
  Stream& writer = env.rt().stream(2);
  std::vector<int> buffer(1024, 1); // written on the CPU before any stream used it
  std::vector<int> seen;

  encodeUse(reader, buffer.data(), Access::Read, [&] {
    std::this_thread::sleep_for(30ms); // a writer that does not wait overwrites first
    seen = buffer;
  }, SyncType::NONE);
  encodeUse(writer, buffer.data(), Access::Write,
            [&] { std::fill(buffer.begin(), buffer.end(), 9); }, SyncType::COMMIT_AND_WAIT);
  reader.dispatch([&] { reader.synchronize(SyncType::COMMIT_AND_WAIT); });

  REQUIRE(buffer == std::vector<int>(buffer.size(), 9));
  if (protectionOn) {
    REQUIRE(seen == std::vector<int>(buffer.size(), 1));
    REQUIRE(writer.stats().crossStreamWaits == 1);
  } else {
    REQUIRE(seen == std::vector<int>(buffer.size(), 9)); // the read saw the later write
  }
}

TEST_CASE("cross-stream order: writes on two streams land in encode order", "[cross-stream]") {
  const bool protectionOn = GENERATE(true, false);
  CAPTURE(protectionOn);
  SimRuntime env(ordering(protectionOn));
  Stream& first = env.rt().stream(1);
  Stream& second = env.rt().stream(2);
  std::vector<int> buffer(256, 0);
  encodeUse(first, buffer.data(), Access::Write, [&] {
    std::this_thread::sleep_for(30ms);
    std::fill(buffer.begin(), buffer.end(), 1);
  }, SyncType::NONE);
  encodeUse(second, buffer.data(), Access::Write,
            [&] { std::fill(buffer.begin(), buffer.end(), 2); }, SyncType::COMMIT_AND_WAIT);
  first.dispatch([&] { first.synchronize(SyncType::COMMIT_AND_WAIT); });
  REQUIRE(buffer == std::vector<int>(buffer.size(), protectionOn ? 2 : 1));
}

TEST_CASE("cross-stream order: two streams reading each other's uncommitted write never "
          "deadlock",
          "[cross-stream][threads]") {
  SimRuntime env;
  Stream& s1 = env.rt().stream(1);
  Stream& s2 = env.rt().stream(2);
  const int rounds = scaled(30, 5);
  std::vector<int> a(512, 0);
  std::vector<int> b(512, 0);
  std::vector<int> mismatches(2, 0);
  std::barrier bothWritten(2);
  auto side = [&](Stream& mine, std::vector<int>& own, std::vector<int>& others, int id,
                  int otherId) {
    return [&, id, otherId] {
      std::vector<int> seen;
      for (int round = 1; round <= rounds; ++round) {
        int value = round * 10 + id;
        encodeUse(mine, own.data(), Access::Write, [&own, value] {
          std::this_thread::sleep_for(1ms);
          std::fill(own.begin(), own.end(), value);
        }, SyncType::NONE);
        bothWritten.arrive_and_wait(); // both writes are open: each read needs the other's
        encodeUse(mine, others.data(), Access::Read, [&] { seen = others; },
                  SyncType::COMMIT_AND_WAIT);
        const int expected = round * 10 + otherId;
        if (seen.size() != others.size() ||
            !std::all_of(seen.begin(), seen.end(), [&](int v) { return v == expected; })) {
          ++mismatches[id - 1];
        }
        bothWritten.arrive_and_wait(); // the next round's writes come after both reads
      }
    };
  };
  ThreadGroup group;
  group.spawn(side(s1, a, b, 1, 2));
  group.spawn(side(s2, b, a, 2, 1));
  group.joinAndRethrow(30000ms, "mutually waiting streams");
  REQUIRE(mismatches == std::vector<int>{0, 0});
  REQUIRE(env.device().stats().violations == 0);
}

} // namespace mpsts_test
