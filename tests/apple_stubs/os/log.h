#pragma once
// <os/log.h> (included by ATen/mps/MPSProfiler.h).
#include <os/object.h>
OS_OBJECT_DECL(os_log);
#ifdef __cplusplus
extern "C" {
#endif
os_log_t os_log_create(const char* subsystem, const char* category);
#ifdef __cplusplus
}
#endif
