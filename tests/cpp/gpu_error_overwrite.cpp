// Note [Overwriting a failed write] (stream.h): after a failed batch wrote a buffer, a write
// that covers the whole buffer (or any write after a failed reader) is ordered after it but
// does not inherit its failure; a partial write and every read still do. And the error names
// the root failure once, however long the chain of dependents (Note [GPU errors belong to
// batches]); the sim counts the kernels a failed batch skipped.
//
// Each test runs its threads one after another, or holds the failing batch on the GPU with a
// Gate, so the order of events is certain.

#include <string>
#include <vector>

#include "test_support.h"

namespace mpsts_test {
namespace {

using Catch::Matchers::Contains;
using Access = BufferUse::Access;

constexpr const char* kKernelMessage = "index_select: index 100 out of range";

// On `s`: a write of `buffer` by a kernel that fails (the rest of the batch is skipped), then
// the batch is committed; `held`: the kernel waits for it first (the batch is still on the GPU).
void failingWrite(Stream& s, const void* buffer, std::function<void()> held = [] {}) {
  const BufferUse write{buffer, Access::Write};
  s.dispatch([&] {
    s.useBuffers(&write, 1);
    encodeKernel(s, [held] {
      held();
      throw std::runtime_error(kKernelMessage);
    });
    s.synchronize(SyncType::COMMIT);
  });
}

// On `s`: one kernel using `use`, then `sync`. Returns the error raised ("" if none).
std::string useOn(Stream& s, BufferUse use, SyncType sync = SyncType::COMMIT_AND_WAIT) {
  try {
    s.dispatch([&] {
      s.useBuffers(&use, 1);
      encodeKernel(s, [] {});
      s.synchronize(sync);
    });
  } catch (const CommandBufferError& e) {
    return e.what();
  }
  return "";
}

// On `s`: one kernel using all of `uses`, then COMMIT_AND_WAIT. Returns the error raised.
std::string useAllOn(Stream& s, std::vector<BufferUse> uses) {
  try {
    s.dispatch([&] {
      s.useBuffers(uses.data(), uses.size());
      encodeKernel(s, [] {});
      s.synchronize(SyncType::COMMIT_AND_WAIT);
    });
  } catch (const CommandBufferError& e) {
    return e.what();
  }
  return "";
}

std::string syncOf(Stream& s) {
  try {
    s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); });
  } catch (const CommandBufferError& e) {
    return e.what();
  }
  return "";
}

size_t occurrences(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++count;
  }
  return count;
}

} // namespace

TEST_CASE("failed write: a covering write on another stream is clean, a partial one is not",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  Stream& c = env.rt().stream(3);
  int buffer = 0;
  const BufferUse read{&buffer, Access::Read};
  const BufferUse partial{&buffer, Access::Write};
  const BufferUse covering{&buffer, Access::Write, /*coversBuffer=*/true};

  SECTION("the failed batch has completed") {
    failingWrite(a, &buffer);
    a.waitCompleted(a.submittedBatch());
    // Every read, and a partial write, raise it at once.
    REQUIRE_THAT(useOn(b, read), Contains(kKernelMessage) && Contains("batch 1 of stream 1"));
    REQUIRE_THAT(useOn(b, partial), Contains(kKernelMessage));
    // A covering write is clean, and so is every reader after it, on any stream.
    REQUIRE(useOn(b, covering) == "");
    REQUIRE(useOn(c, read) == "");
    REQUIRE(useOn(a, read) == "");
  }

  SECTION("the failed batch is still on the GPU") {
    Gate gpu;
    failingWrite(a, &buffer, gpu.waiter());
    REQUIRE(useOn(b, covering, SyncType::COMMIT) == ""); // ordered after it on the GPU
    REQUIRE(b.completedBatch() == 0);
    gpu.open();
    REQUIRE(syncOf(b) == "");
    REQUIRE(useOn(c, read) == "");
  }

  SECTION("a partial write while the failed batch is on the GPU carries it to its readers") {
    Gate gpu;
    failingWrite(a, &buffer, gpu.waiter());
    REQUIRE(useOn(b, partial, SyncType::COMMIT) == "");
    gpu.open();
    b.waitCompleted(b.submittedBatch());
    // The tracker now knows only b's write: c learns of the loss through b's batch.
    const std::string seen = useOn(c, read);
    REQUIRE_THAT(seen, Contains("batch 1 of stream 2 depends on failed batch 1 of stream 1") &&
                           Contains(kKernelMessage));
  }
}

TEST_CASE("failed read: a write after it on another stream is ordering only",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  int buffer = 0;
  const BufferUse read{&buffer, Access::Read};
  const BufferUse partial{&buffer, Access::Write};
  for (const bool stillRunning : {false, true}) {
    CAPTURE(stillRunning);
    Gate gpu;
    a.dispatch([&] {
      a.useBuffers(&read, 1);
      encodeKernel(a, [held = gpu.waiter()] {
        held();
        throw std::runtime_error(kKernelMessage);
      });
      a.synchronize(SyncType::COMMIT);
    });
    if (!stillRunning) {
      gpu.open();
      a.waitCompleted(a.submittedBatch());
    }
    REQUIRE(useOn(b, partial, SyncType::COMMIT) == "");
    gpu.open();
    REQUIRE(syncOf(b) == "");
    REQUIRE_THAT(syncOf(a), Contains(kKernelMessage)); // still the reader's own error
  }
}

// The same stream: the Note's stream order decides. Once the threads of the failed batch were
// told, a covering write is clean; before that, the failure reaches it like any later batch.
TEST_CASE("failed write: on the failing stream, a covering write is clean once told",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  int buffer = 0;
  const BufferUse read{&buffer, Access::Read};
  const BufferUse partial{&buffer, Access::Write};
  const BufferUse covering{&buffer, Access::Write, /*coversBuffer=*/true};

  SECTION("told, then overwritten") {
    failingWrite(a, &buffer);
    REQUIRE_THAT(syncOf(a), Contains(kKernelMessage)); // told
    REQUIRE(useOn(a, covering) == "");
    REQUIRE(useOn(a, read) == "");
    REQUIRE(useOn(a, partial) == "");
    REQUIRE(useOn(a, read) == "");
  }

  SECTION("told, then read or partly written: still failed, every time") {
    failingWrite(a, &buffer);
    REQUIRE_THAT(syncOf(a), Contains(kKernelMessage));
    REQUIRE_THAT(useOn(a, read), Contains(kKernelMessage));
    REQUIRE_THAT(useOn(a, read), Contains(kKernelMessage));
    REQUIRE_THAT(useOn(a, partial), Contains(kKernelMessage));
    REQUIRE_THAT(useOn(a, read), Contains(kKernelMessage));
    REQUIRE(useOn(a, covering) == ""); // and overwriting it still cleans it
    REQUIRE(useOn(a, read) == "");
  }

  SECTION("not told yet: stream order carries the failure to the overwrite's batch") {
    failingWrite(a, &buffer);
    a.waitCompleted(a.submittedBatch());
    REQUIRE_THAT(useOn(a, covering), Contains(kKernelMessage));
    REQUIRE(useOn(a, read) == ""); // told by that raise; the overwrite is in a later batch
  }
}

// An op reading a buffer lost in batch 1 and one written cleanly in batch 2 of the same
// stream: its failure dependency is batch 1, not the latest batch it waits for. (It was
// merged into "stream 1, batch 2", which is clean: silent garbage, on the writing stream and
// on any other.)
TEST_CASE("failed write: an op also reading a later, clean write of the same stream still fails",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  int lost = 0;
  int clean = 0;
  failingWrite(a, &lost);
  REQUIRE_THAT(syncOf(a), Contains(kKernelMessage)); // told
  REQUIRE(useOn(a, {&clean, Access::Write}) == "");
  const std::vector<BufferUse> both = {{&lost, Access::Read}, {&clean, Access::Read}};
  const std::vector<BufferUse> bothReversed = {{&clean, Access::Read}, {&lost, Access::Read}};
  REQUIRE_THAT(useAllOn(b, both), Contains(kKernelMessage));
  REQUIRE_THAT(useAllOn(b, bothReversed), Contains(kKernelMessage));
  REQUIRE_THAT(useAllOn(a, both), Contains(kKernelMessage));
  REQUIRE_THAT(useAllOn(a, bothReversed), Contains(kKernelMessage));
  REQUIRE(useAllOn(b, {{&clean, Access::Read}}) == "");
}

TEST_CASE("gpu errors: the message names the root failure once, however long the chain",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  int buffer = 0;
  const BufferUse partial{&buffer, Access::Write};
  failingWrite(a, &buffer);
  REQUIRE_THAT(syncOf(a), Contains(kKernelMessage));
  // x.add_(1) in a loop after the failure: each round's batch depends on the previous one's.
  std::vector<std::string> seen;
  for (int round = 0; round < 5; ++round) {
    seen.push_back(useOn(a, partial));
  }
  for (size_t round = 0; round < seen.size(); ++round) {
    CAPTURE(round, seen[round]);
    REQUIRE_THAT(seen[round], Contains("depends on failed batch 1 of stream 1: ") &&
                                  Contains(kKernelMessage));
    REQUIRE(occurrences(seen[round], "depends on") == 1);
    REQUIRE(occurrences(seen[round], kKernelMessage) == 1);
    REQUIRE(seen[round].size() == seen[0].size()); // batches 2..6: as many digits
  }
}

TEST_CASE("sim counters: kernels skipped by a failed batch are counted and reconcile",
          "[errors][overwrite]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  a.dispatch([&] {
    encodeKernel(a, [] {});
    encodeKernel(a, [] { throw std::runtime_error(kKernelMessage); });
    encodeKernel(a, [] {});
    encodeKernel(a, [] {});
    a.synchronize(SyncType::COMMIT);
  });
  REQUIRE_THROWS(env.rt().synchronizeDevice());
  const auto stats = env.device().stats();
  REQUIRE(stats.kernelsEncoded == 4);
  REQUIRE(stats.kernelsExecuted == 1);
  REQUIRE(stats.kernelsFailed == 1);
  REQUIRE(stats.kernelsSkipped == 2);
  REQUIRE(stats.kernelsEncoded == stats.kernelsExecuted + stats.kernelsFailed +
                                      stats.kernelsSkipped);
}

} // namespace mpsts_test
