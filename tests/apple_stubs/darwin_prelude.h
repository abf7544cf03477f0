#pragma once
// Also: libc++'s <mutex> includes <condition_variable> transitively and ATen/mps/MPSEvent.h relies
// on it; libstdc++'s does not.
#ifdef __cplusplus
#include <condition_variable>
#endif
// Darwin libc extensions the v2.14.1 headers use and glibc lacks (force-included by
// tests/patches/check.sh; on macOS they come from <time.h>).
#include <stdint.h>
#include <time.h>
#ifdef __cplusplus
extern "C" {
#endif
// <time.h>, macOS 10.12+
uint64_t clock_gettime_nsec_np(clockid_t clock_id);
#ifdef __cplusplus
}
#endif
