// Passing a buffer where Metal takes an event must not pass.
// expect: (cannot initialize a parameter of type|incompatible type) 'id<MTLEvent>
#include <Metal/Metal.h>

void signal(id<MTLCommandBuffer> commandBuffer, id<MTLBuffer> buffer) {
  [commandBuffer encodeSignalEvent:buffer value:1];
}
