#include "messages.h"

#include <cstdio>

namespace at::mps::threadsafe::sim {

std::string addressOf(const void* object) {
  char text[32];
  std::snprintf(text, sizeof text, "%p", object);
  return text;
}

std::string failedAssertion(const char* method, const char* assertion, const std::string& object) {
  return std::string(method) + ": failed assertion `" + assertion + "' (" + object + ")";
}

std::string concurrentUseCrash(const std::string& object) {
  return "EXC_BAD_ACCESS (SIGSEGV) in AGX::ComputeContext::prepareForEnqueue: two threads inside " +
      object + " at once";
}

std::string messageToDeallocated(const char* method, const std::string& object,
                                 const void* address) {
  return std::string("*** ") + method + ": message sent to deallocated instance " +
      addressOf(address) + " (" + object + ")";
}

} // namespace at::mps::threadsafe::sim
