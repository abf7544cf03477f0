#pragma once
// <mach/vm_page_size.h> (included by ATen/mps/MPSAllocator.h).
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
typedef uintptr_t vm_size_t;
extern vm_size_t vm_page_size;
extern vm_size_t vm_page_mask;
extern int vm_page_shift;
#ifdef __cplusplus
}
#endif
