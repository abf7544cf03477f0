#pragma once
// <os/signpost.h> (included by ATen/mps/MPSProfiler.h).
#include <stdint.h>
#include <os/log.h>
typedef uint64_t os_signpost_id_t;
typedef enum : uint8_t {
  OS_SIGNPOST_EVENT = 0x00,
  OS_SIGNPOST_INTERVAL_BEGIN = 0x01,
  OS_SIGNPOST_INTERVAL_END = 0x02,
} os_signpost_type_t;
