# The schedule-exploration engine (tests/explore/): a static library shared by the Catch2
# suite (tests/cpp/schedule_exploration.cpp) and the soak tool (tools/soak.cpp), which needs
# no Catch2 (configure with -DBUILD_TESTING=OFF to build it alone).

include_guard(GLOBAL)

add_library(mpsts_exploration STATIC
  "${MPSTS_ROOT}/tests/explore/exploration.cpp"
  "${MPSTS_ROOT}/tests/explore/exploration.h")
target_link_libraries(mpsts_exploration PUBLIC mps_threadsafe_runtime)
target_include_directories(mpsts_exploration PUBLIC "${MPSTS_ROOT}/tests")
set_target_properties(mpsts_exploration PROPERTIES CXX_EXTENSIONS OFF)
mpsts_target_warnings(mpsts_exploration)
