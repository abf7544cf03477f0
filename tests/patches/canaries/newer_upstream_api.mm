// Code written against a newer upstream MPSStream.mm (getStreamFromPool(id), profiler calls
// with a stream argument) must not pass against the v2.14.1 headers.
// expect: too many arguments|no matching (member )?function
#include <ATen/mps/MPSProfiler.h>
#include <ATen/mps/MPSStream.h>

namespace at::mps {
void newerApi(MPSStream* stream) {
  getMPSProfiler().endProfileCopy(1, SyncType::NONE, stream);
  (void)getStreamFromPool(3);
}
} // namespace at::mps
