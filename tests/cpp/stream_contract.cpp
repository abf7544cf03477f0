// The stream's contract (Note [On the queue], Note [Domain lock order]): every breach is a
// ContractError (counted), never a Metal violation, a deadlock or an abort.

#include "test_support.h"

namespace mpsts_test {

TEST_CASE("stream contract: encoder and command buffer off the stream's queue are refused",
          "[stream][contract]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  BufferUse use{&s, BufferUse::Access::Read};
  REQUIRE_THROWS_AS(s.commandEncoder(), ContractError);
  REQUIRE_THROWS_AS(s.commandBuffer(), ContractError);
  REQUIRE_THROWS_AS(s.leaseEncoder(), ContractError);
  REQUIRE_THROWS_AS(s.endKernelCoalescing(), ContractError);
  REQUIRE_THROWS_AS(s.synchronize(SyncType::COMMIT), ContractError);
  REQUIRE_THROWS_AS(s.addCompletedHandler([](CommandBufferStatus, const std::string&) {}),
                    ContractError);
  REQUIRE_THROWS_AS(s.useBuffers(&use, 1), ContractError);
  REQUIRE_THROWS_AS(s.waitForStream(env.rt().stream(2), 1), ContractError);
  REQUIRE(env.rt().stats().contractViolations == 8);

  SECTION("not even from inside another stream's queue") {
    Stream& other = env.rt().stream(2);
    other.dispatch([&] { REQUIRE_THROWS_AS(s.commandEncoder(), ContractError); });
  }
  SECTION("on the queue, the same calls work") {
    s.dispatch([&] {
      REQUIRE_NOTHROW(s.commandEncoder());
      REQUIRE_NOTHROW(s.commandBuffer());
      s.synchronize(SyncType::COMMIT_AND_WAIT);
    });
  }
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream contract: endKernelCoalescing while an encoder lease is out is refused",
          "[stream][contract]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  std::atomic<int> ran{0};
  REQUIRE_THROWS_AS(s.dispatch([&] {
    EncoderLease lease = s.leaseEncoder();
    REQUIRE(s.leaseOut());
    sim::simEncoder(lease.encoder()).dispatch([&] { ++ran; });
    s.endKernelCoalescing();
  }), ContractError);
  REQUIRE_FALSE(s.leaseOut()); // the lease ended while the error unwound
  // The encoder was left alone: the stream goes on with it, and nothing is lost.
  runKernel(s, [&] { ++ran; }, SyncType::COMMIT_AND_WAIT);
  REQUIRE(ran == 2);
  REQUIRE(s.stats().encodersCreated == 1);
  REQUIRE(env.rt().stats().contractViolations == 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream contract: synchronize while an encoder lease is out is refused",
          "[stream][contract]") {
  const SyncType type =
      GENERATE(SyncType::COMMIT, SyncType::COMMIT_AND_WAIT, SyncType::COMMIT_AND_CONTINUE);
  CAPTURE(toString(type));
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  std::atomic<int> ran{0};
  REQUIRE_THROWS_AS(s.dispatch([&] {
    EncoderLease lease = s.leaseEncoder();
    sim::simEncoder(lease.encoder()).dispatch([&] { ++ran; });
    s.synchronize(type);
  }), ContractError);
  REQUIRE(s.submittedBatch() == 0);
  REQUIRE(s.hasUncommittedWork());
  s.dispatch([&] { s.synchronize(SyncType::COMMIT_AND_WAIT); });
  REQUIRE(ran == 1);
  REQUIRE(env.device().stats().violations == 0);
}

TEST_CASE("stream contract: entering a queue from inside a queue is refused, never deadlocks",
          "[stream][contract]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  bool innerRan = false;
  ThreadGroup group; // a deadlock fails the run instead of hanging it
  std::atomic<int> sameStream{0};
  std::atomic<int> otherStream{0};
  group.spawn([&] {
    a.dispatch([&] {
      try {
        a.dispatch([&] { innerRan = true; });
      } catch (const ReentryError&) {
        ++sameStream;
      }
      try {
        b.dispatch([&] { innerRan = true; });
      } catch (const ReentryError&) {
        // a ReentryError is a ContractError too, but entering another queue is not re-entry
      } catch (const ContractError&) {
        ++otherStream;
      }
    });
  });
  group.joinAndRethrow(10000ms);
  REQUIRE(sameStream == 1);
  REQUIRE(otherStream == 1);
  REQUIRE_FALSE(innerRan);
  REQUIRE_FALSE(a.isCurrent());
}

TEST_CASE("stream contract: entering a queue while holding a serialization domain is refused",
          "[stream][contract][domains]") {
  SimRuntime env;
  Stream& s = env.rt().stream(1);
  Stream& other = env.rt().stream(2);
  bool ran = false;
  {
    DomainGuard guard(env.rt().domains().forClass("layer_norm"), true);
    REQUIRE(DomainGuard::heldByThisThread() == 1);
    REQUIRE_THROWS_AS(s.dispatch([&] { ran = true; }), ContractError);
  }
  REQUIRE(DomainGuard::heldByThisThread() == 0);
  REQUIRE_FALSE(ran);

  SECTION("nor waiting for another stream while holding one") {
    runKernel(other, [] {}, SyncType::NONE);
    REQUIRE_THROWS_AS(s.dispatch([&] {
      DomainGuard guard(env.rt().domains().forClass("layer_norm"), true);
      s.waitForStream(other, 1);
    }), ContractError);
    REQUIRE(DomainGuard::heldByThisThread() == 0);
  }
  SECTION("the right order, queue then domain, works") {
    s.dispatch([&] {
      DomainGuard guard(env.rt().domains().forClass("layer_norm"), true);
      ran = true;
    });
    REQUIRE(ran);
  }
}

} // namespace mpsts_test

namespace mpsts_test {

TEST_CASE("contract: a raw entry into the executor is on the queue, anywhere else raises",
          "[contract][issue8]") {
  SimRuntime env;
  Stream& a = env.rt().stream(1);
  Stream& b = env.rt().stream(2);
  auto ran = std::make_shared<std::atomic<bool>>(false);
  // PyTorch's custom-kernel pattern: dispatch_sync(get_dispatch_queue(), ^{ encode; commit }).
  bool currentInside = false;
  bool otherCurrentInside = true;
  a.executor().dispatchSync([&] {
    currentInside = a.isCurrent();
    otherCurrentInside = b.isCurrent();
    encodeKernel(a, [ran] { ran->store(true); });
    a.synchronize(SyncType::COMMIT_AND_WAIT);
  });
  REQUIRE(currentInside);
  REQUIRE_FALSE(otherCurrentInside);
  REQUIRE(ran->load());
  // Off the executor: raises, never touches the buffer.
  REQUIRE_FALSE(a.isCurrent());
  REQUIRE_THROWS_AS(a.commandEncoder(), ContractError);
  REQUIRE_THROWS_AS(a.synchronize(SyncType::COMMIT), ContractError);
  // Inside a's executor is not inside b's.
  a.executor().dispatchSync([&] { REQUIRE_THROWS_AS(b.commandBuffer(), ContractError); });
  // dispatch() from inside a raw block on the same executor is refused, not a deadlock.
  a.executor().dispatchSync([&] { REQUIRE_THROWS_AS(a.dispatch([] {}), ReentryError); });
  REQUIRE(env.device().stats().violations == 0);
}

} // namespace mpsts_test
