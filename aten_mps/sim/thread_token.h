#pragma once

// A cheap identity for the calling thread: the address of a thread_local. Unlike hashing
// std::thread::id it is one TLS address computation, never 0, and fits an atomic word, so
// "which thread is inside this object" is a single compare-and-swap.

#include <cstdint>

namespace at::mps::threadsafe::sim {

inline uint64_t threadToken() noexcept {
  // Trivially destructible on purpose: threads may use it during process exit.
  thread_local const char marker = 0;
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&marker));
}

} // namespace at::mps::threadsafe::sim
