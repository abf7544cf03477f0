#pragma once

// What the mps_sim DeviceGuardImpl (guard.cpp) tells the op files about the calling thread.

namespace at::mps::threadsafe {
class Stream;
} // namespace at::mps::threadsafe

namespace mps_sim {

// Raises (ValueError) when a stream guard made an invalid stream id current on this thread
// (Note [Invalid streams in a guard]); ops call it before encoding.
void checkThreadStream();

// Makes `stream` (nullptr: the thread policy's choice) this thread's current stream, as
// torch.mps_sim.set_stream and torch.mps_sim.stream() do. It replaces an invalid stream a
// guard made current (Note [Invalid streams in a guard]): without that, a thread that had
// entered torch.accelerator.set_stream(torch.Stream(stream_id=99, ...)) kept raising on
// every op after set_stream(a valid stream), while current_stream() named the valid one.
void setThreadStream(at::mps::threadsafe::Stream* stream);

// How many exchanges this thread's guard stack remembers (Note [A bounded guard stack]); for
// tests.
int savedExchangeDepth();

} // namespace mps_sim
