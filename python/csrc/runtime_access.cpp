#include "runtime_access.h"

#include "allocator.h"
#include "fork.h"

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

namespace mps_sim {
namespace {

bool envFlag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

// A whole number in 0..max from the environment, or `fallback` when unset. Anything else is
// refused with the variable's name (strtoul would read "-5" as a huge number, and "abc" as 0).
uint64_t envUnsigned(const char* name, uint64_t fallback, uint64_t max) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0') {
    return fallback;
  }
  char* end = nullptr;
  errno = 0;
  const unsigned long long parsed = std::strtoull(value, &end, 10);
  TORCH_CHECK(value[0] >= '0' && value[0] <= '9' && *end == '\0' && errno == 0 && parsed <= max,
              "mps_sim: environment variable ", name, "='", value, "' must be a whole number from 0 "
              "to ", max);
  return parsed;
}

ts::sim::ViolationPolicy policyFromEnv() {
  const char* value = std::getenv("MPS_SIM_VIOLATIONS");
  const std::string policy = value ? value : "abort";
  if (policy == "throw") {
    return ts::sim::ViolationPolicy::Throw;
  }
  if (policy == "count") {
    return ts::sim::ViolationPolicy::Count;
  }
  return ts::sim::ViolationPolicy::Abort;
}

struct Global {
  ts::Runtime* runtime = nullptr;
  ts::sim::SimDevice* device = nullptr;
};

Global& global() {
  static std::once_flag once;
  static Global g;
  std::call_once(once, [] {
    noteDeviceInitialized(); // first: a fork from now on leaves a bad fork (fork.cpp)
    ts::sim::Config config;
    config.policy = policyFromEnv();
    // At most 10 s: a race window holds a thread inside a sim object that long.
    config.raceWindowUs.fill(static_cast<uint32_t>(
        envUnsigned("MPS_SIM_RACE_WINDOW_US", config.raceWindowUs[0], 10'000'000)));
    auto device = std::make_unique<ts::sim::SimDevice>(config);
    g.device = device.get();
    ts::RuntimeOptions options;
    options.threadsafe = envFlag("MPS_SIM_THREADSAFE");
    options.protections =
        envFlag("MPS_SIM_UNSAFE") ? ts::Protections::none() : ts::Protections::all();
    // Leaked on purpose: Note [Runtime lifetime].
    g.runtime = new ts::Runtime(std::move(device), options);
    // COMMIT_ADAPTIVE commits when live device memory passes this (upstream: the allocator's
    // low watermark), so a thread that never synchronizes cannot grow its batch forever.
    const size_t pressureBytes = static_cast<size_t>(
        envUnsigned("MPS_SIM_PRESSURE_BYTES", uint64_t(1) << 30, uint64_t(1) << 50));
    g.runtime->setMemoryPressureProbe(
        [pressureBytes] { return allocatorStats().allocatedBytes > pressureBytes; });
  });
  return g;
}

} // namespace

// Note [Device use after fork] (fork.cpp): every use of the device comes through here.
ts::Runtime& runtime() {
  checkNotInBadFork();
  return *global().runtime;
}

ts::sim::SimDevice& simDevice() {
  checkNotInBadFork();
  return *global().device;
}

} // namespace mps_sim
