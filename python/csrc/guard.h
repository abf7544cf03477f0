#pragma once

// What the mps_sim DeviceGuardImpl (guard.cpp) tells the op files about the calling thread.

namespace mps_sim {

// Raises (ValueError) when a stream guard made an invalid stream id current on this thread
// (Note [Invalid streams in a guard]); ops call it before encoding.
void checkThreadStream();

} // namespace mps_sim
