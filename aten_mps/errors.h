#pragma once

// Every way the runtime refuses a request is one of these exceptions; none of them aborts.
// (The sim backend's crash-faithful abort is for breaches of Metal's own rules, which only a
// bug in the runtime or the deliberately unprotected mode can cause: see sim/violation.h.)

#include <stdexcept>
#include <string>

namespace at::mps::threadsafe {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller broke the runtime's contract: an encoder touched off its stream's queue, a
// commit while an encoder lease is out, a queue entered while holding a serialization domain.
class ContractError : public Error {
 public:
  using Error::Error;
};

// dispatchSync onto the serial executor the caller is already running on (GCD would
// deadlock; we say so instead).
class ReentryError : public ContractError {
 public:
  using ContractError::ContractError;
};

// A command buffer failed on the GPU; raised to what depends on its batch (Note [GPU errors
// belong to batches] in stream.h): a reader of its outputs, a wait on it, a synchronize.
class CommandBufferError : public Error {
 public:
  using Error::Error;
};

// A request the runtime cannot honour right now, e.g. switching the thread policy while
// another thread has encoded work it has not committed.
class WorkInFlightError : public Error {
 public:
  using Error::Error;
};

class InvalidArgument : public Error {
 public:
  using Error::Error;
};

} // namespace at::mps::threadsafe
