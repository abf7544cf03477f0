#pragma once

#include <string>
#include <vector>

namespace mps_sim {

// Names of the aten ops mps_sim implements (generic and special), for diagnostics and tests.
std::vector<std::string> implementedOps();
// The ops with their own kernels (ops_memory.cpp, ops_composite.cpp).
const std::vector<std::string>& specialOps();

} // namespace mps_sim
