#pragma once

// Breaches of Metal's object rules, as the sim device reports them. Each kind carries the
// message Metal's API validation (or, for races, the crash report) gives for it.

#include <cstdint>
#include <stdexcept>
#include <string>

namespace at::mps::threadsafe::sim {

enum class ViolationPolicy : uint8_t {
  Abort, // print the message and abort, as Metal does (default: crash-faithful)
  Throw, // throw MetalViolation from the offending call
  Count, // record and carry on (stress tests of the unprotected mode)
};

enum class ViolationKind : uint8_t {
  EncoderAlreadyEncoding, // "A command encoder is already encoding to this command buffer"
  CommitCommitted, // "commit an already committed command buffer"
  HandlerAfterCommit, // "Completed handler provided after commit call"
  EncodeAfterCommit, // encoding into a committed command buffer
  EndEncodingTwice, // endEncoding on an ended encoder
  EncodeAfterEnd, // using an encoder after endEncoding
  CommitWithOpenEncoder, // commit while an encoder is still encoding
  ConcurrentUse, // two threads inside one object at once (SIGSEGV in the driver)
  UseAfterRelease, // message sent to a released object
  kCount,
};

const char* toString(ViolationKind kind);

class MetalViolation : public std::runtime_error {
 public:
  MetalViolation(ViolationKind kind, const std::string& message)
      : std::runtime_error(message), kind_(kind) {}
  ViolationKind kind() const {
    return kind_;
  }

 private:
  ViolationKind kind_;
};

} // namespace at::mps::threadsafe::sim
