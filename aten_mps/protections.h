#pragma once

// The runtime's protections, each of which can be switched off on its own. Off is the
// deliberately unsafe mode: it exists so tests can show that the sim device catches the
// violations the protections prevent (a threaded test that cannot fail proves nothing).

#include <atomic>
#include <cstdint>

namespace at::mps::threadsafe {

struct Protections {
  bool serialQueue = true; // Stream::dispatch enters the stream's serial executor
  bool domains = true; // DomainGuard takes its domain
  bool crossStreamOrder = true; // Stream::useBuffers orders uses across streams
  bool deferredFrees = true; // PendingFrees holds buffers other streams still use

  static Protections all() {
    return {};
  }
  static Protections none() {
    return {false, false, false, false};
  }
  bool operator==(const Protections&) const = default;
};

// The runtime's current protections, switchable while threads run: all four flags in one
// atomic byte, so a reader gets one consistent set (never the flags of two different
// setProtections calls) with one acquire load.
class AtomicProtections {
 public:
  explicit AtomicProtections(Protections initial) : bits_(toBits(initial)) {}
  AtomicProtections(const AtomicProtections&) = delete;
  AtomicProtections& operator=(const AtomicProtections&) = delete;

  Protections load() const {
    return fromBits(bits_.load(std::memory_order_acquire));
  }
  void store(Protections protections) {
    bits_.store(toBits(protections), std::memory_order_release);
  }

 private:
  static uint8_t toBits(Protections p) {
    return static_cast<uint8_t>((p.serialQueue ? 1 : 0) | (p.domains ? 2 : 0) |
                                (p.crossStreamOrder ? 4 : 0) | (p.deferredFrees ? 8 : 0));
  }
  static Protections fromBits(uint8_t bits) {
    return {(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0, (bits & 8) != 0};
  }

  std::atomic<uint8_t> bits_;
};

} // namespace at::mps::threadsafe
