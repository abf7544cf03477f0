#include "schedule.h"

#include <chrono>
#include <thread>

namespace at::mps::threadsafe::schedule {

namespace detail {
std::atomic<bool> gEnabled{false};
} // namespace detail

namespace {

// Settings of the current epoch. Written by enable() before gEnabled is set (release) and
// read after it is seen set; plain atomics so a late reader of an old epoch is no data race.
std::atomic<uint64_t> gSeed{0};
std::atomic<uint64_t> gEpoch{0};
std::atomic<uint32_t> gMaxSleepUs{50};
std::atomic<uint32_t> gMaxSpinUs{20};
std::atomic<uint32_t> gNothing{400};
std::atomic<uint32_t> gYield{250};
std::atomic<uint32_t> gSleep{200};
std::atomic<uint32_t> gNextAutoOrdinal{0};

std::atomic<uint64_t> gHits{0};
std::atomic<uint64_t> gYields{0};
std::atomic<uint64_t> gSleeps{0};
std::atomic<uint64_t> gSpins{0};
std::atomic<uint64_t> gHitsPerPoint[kSchedulePointCount];

// Trivially destructible, so race points stay usable in thread-exit code.
struct ThreadState {
  uint64_t epoch = 0; // epoch the fields below belong to (0: none yet)
  uint32_t ordinal = 0;
  bool named = false; // ordinal set by setThreadOrdinal (kept across epochs)
  uint32_t hits[kSchedulePointCount] = {};
};
thread_local ThreadState tls;

void spinFor(uint32_t us) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(us);
  while (std::chrono::steady_clock::now() < until) {
  }
}

ThreadState& current() {
  const uint64_t epoch = gEpoch.load(std::memory_order_acquire);
  if (tls.epoch != epoch) {
    tls.epoch = epoch;
    for (uint32_t& hit : tls.hits) {
      hit = 0;
    }
    if (!tls.named) {
      tls.ordinal = 1000 + gNextAutoOrdinal.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return tls;
}

} // namespace

void enable(uint64_t seed, Options options) {
  gSeed.store(seed, std::memory_order_relaxed);
  gMaxSleepUs.store(options.maxSleepUs == 0 ? 1 : options.maxSleepUs, std::memory_order_relaxed);
  gMaxSpinUs.store(options.maxSpinUs == 0 ? 1 : options.maxSpinUs, std::memory_order_relaxed);
  gNothing.store(options.nothingPermille, std::memory_order_relaxed);
  gYield.store(options.yieldPermille, std::memory_order_relaxed);
  gSleep.store(options.sleepPermille, std::memory_order_relaxed);
  gNextAutoOrdinal.store(0, std::memory_order_relaxed);
  gHits.store(0, std::memory_order_relaxed);
  gYields.store(0, std::memory_order_relaxed);
  gSleeps.store(0, std::memory_order_relaxed);
  gSpins.store(0, std::memory_order_relaxed);
  for (auto& hits : gHitsPerPoint) {
    hits.store(0, std::memory_order_relaxed);
  }
  gEpoch.fetch_add(1, std::memory_order_release);
  detail::gEnabled.store(true, std::memory_order_release);
}

void disable() {
  detail::gEnabled.store(false, std::memory_order_release);
}

bool enabled() {
  return detail::gEnabled.load(std::memory_order_acquire);
}

uint64_t seed() {
  return gSeed.load(std::memory_order_relaxed);
}

void setThreadOrdinal(uint32_t ordinal) {
  tls.named = true;
  tls.ordinal = ordinal;
}

const char* pointName(SchedulePoint point) {
  switch (point) {
    case SchedulePoint::DispatchEnter: return "DispatchEnter";
    case SchedulePoint::DispatchExit: return "DispatchExit";
    case SchedulePoint::CommitSignal: return "CommitSignal";
    case SchedulePoint::CommitSubmitted: return "CommitSubmitted";
    case SchedulePoint::CommitPublish: return "CommitPublish";
    case SchedulePoint::CloseRequest: return "CloseRequest";
    case SchedulePoint::EnsureSubmitted: return "EnsureSubmitted";
    case SchedulePoint::WaitStreamRead: return "WaitStreamRead";
    case SchedulePoint::BufferDependencies: return "BufferDependencies";
    case SchedulePoint::BufferRecord: return "BufferRecord";
    case SchedulePoint::PendingFreesAdd: return "PendingFreesAdd";
    case SchedulePoint::PendingFreesTake: return "PendingFreesTake";
    case SchedulePoint::EventRecord: return "EventRecord";
    case SchedulePoint::EventWait: return "EventWait";
    case SchedulePoint::PolicyRead: return "PolicyRead";
    case SchedulePoint::SetThreadsafe: return "SetThreadsafe";
    case SchedulePoint::DeviceSynchronize: return "DeviceSynchronize";
    case SchedulePoint::ThreadUnbind: return "ThreadUnbind";
    case SchedulePoint::GpuKernel: return "GpuKernel";
    case SchedulePoint::GpuComplete: return "GpuComplete";
    case SchedulePoint::CompletionHandler: return "CompletionHandler";
    case SchedulePoint::ErrorDelivery: return "ErrorDelivery";
    case SchedulePoint::kCount: break;
  }
  return "?";
}

Stats stats() {
  Stats s;
  s.hits = gHits.load(std::memory_order_relaxed);
  s.yields = gYields.load(std::memory_order_relaxed);
  s.sleeps = gSleeps.load(std::memory_order_relaxed);
  s.spins = gSpins.load(std::memory_order_relaxed);
  for (int i = 0; i < kSchedulePointCount; ++i) {
    s.hitsPerPoint[i] = gHitsPerPoint[i].load(std::memory_order_relaxed);
  }
  return s;
}

void detail::perturb(SchedulePoint point) {
  const auto index = static_cast<size_t>(point);
  if (index >= static_cast<size_t>(kSchedulePointCount)) {
    return;
  }
  ThreadState& state = current();
  const uint32_t hit = state.hits[index]++;
  gHits.fetch_add(1, std::memory_order_relaxed);
  gHitsPerPoint[index].fetch_add(1, std::memory_order_relaxed);
  const uint64_t h = splitmix64(gSeed.load(std::memory_order_relaxed) ^
                                splitmix64((uint64_t{state.ordinal} << 40) ^
                                           (uint64_t{index} << 32) ^ hit));
  const uint32_t roll = static_cast<uint32_t>(h % 1000);
  const uint32_t amount = static_cast<uint32_t>(h >> 20);
  const uint32_t nothing = gNothing.load(std::memory_order_relaxed);
  const uint32_t yield = nothing + gYield.load(std::memory_order_relaxed);
  const uint32_t sleep = yield + gSleep.load(std::memory_order_relaxed);
  if (roll < nothing) {
    return;
  }
  if (roll < yield) {
    gYields.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::yield();
  } else if (roll < sleep) {
    gSleeps.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(
        std::chrono::microseconds(1 + amount % gMaxSleepUs.load(std::memory_order_relaxed)));
  } else {
    gSpins.fetch_add(1, std::memory_order_relaxed);
    spinFor(1 + amount % gMaxSpinUs.load(std::memory_order_relaxed));
  }
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

} // namespace at::mps::threadsafe::schedule
