// A misspelled Metal selector must not pass: the stubs declare Apple's methods exactly.
// expect: instance method '-commitAndContinu' not found
#include <MetalPerformanceShaders/MetalPerformanceShaders.h>

void commitTwice(MPSCommandBuffer* buffer) {
  [buffer commitAndContinu];
}
