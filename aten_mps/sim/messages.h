#pragma once

// The texts of violations, in the words Metal's API validation layer (or, for races, the
// crash report) uses, followed by which sim object it was.

#include <string>

namespace at::mps::threadsafe::sim {

std::string addressOf(const void* object);

// "-[MTLDebugCommandBuffer commit]: failed assertion `<assertion>' (<object>)"
std::string failedAssertion(const char* method, const char* assertion, const std::string& object);

// "EXC_BAD_ACCESS (SIGSEGV) in AGX::ComputeContext::prepareForEnqueue: two threads inside
// <object> at once"
std::string concurrentUseCrash(const std::string& object);

// "*** -[MTLDebugComputeCommandEncoder endEncoding]: message sent to deallocated instance
// 0x..." (NSZombie's wording)
std::string messageToDeallocated(const char* method, const std::string& object,
                                 const void* address);

} // namespace at::mps::threadsafe::sim
