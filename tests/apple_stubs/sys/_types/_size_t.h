#pragma once
// <sys/_types/_size_t.h>: defines size_t (included directly by ATen/mps/MPSGuardImpl.h).
#include <stddef.h>
