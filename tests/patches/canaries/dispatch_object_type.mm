// Dispatch objects are Objective-C objects in Objective-C++ (as in Apple's headers), not
// pointers that convert to any type: a queue used as an unrelated C++ pointer must not pass.
// expect: cannot initialize|no viable conversion|incompatible
#include <dispatch/dispatch.h>

struct NotAQueue {};
NotAQueue* asStruct(dispatch_queue_t queue) {
  NotAQueue* wrong = queue;
  return wrong;
}
