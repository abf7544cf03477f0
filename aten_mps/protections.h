#pragma once

// The runtime's protections, each of which can be switched off on its own. Off is the
// deliberately unsafe mode: it exists so tests can show that the sim device catches the
// violations the protections prevent (a threaded test that cannot fail proves nothing).

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

} // namespace at::mps::threadsafe
