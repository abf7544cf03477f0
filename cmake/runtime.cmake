# The portable runtime (aten_mps/) and its sim backend (aten_mps/sim/) as one static library,
# `mps_threadsafe_runtime`.
#
# Included by the top-level CMakeLists.txt and, later, by python/CMakeLists.txt (the pybind11
# extension links the same library), so it stands alone: it finds what it needs, sets C++20 on
# the target itself and works whichever project includes it:
#
#   include(${REPO_ROOT}/cmake/runtime.cmake)
#   target_link_libraries(my_extension PRIVATE mps_threadsafe_runtime)
#
# The Metal backend (aten_mps/metal/, Objective-C++) is built only inside PyTorch by the patch
# series, never here.

include_guard(GLOBAL)

get_filename_component(MPSTS_ROOT "${CMAKE_CURRENT_LIST_DIR}/.." ABSOLUTE)
include("${CMAKE_CURRENT_LIST_DIR}/warnings.cmake")

find_package(Threads REQUIRED)

# CONFIGURE_DEPENDS: a source file added to aten_mps/ re-runs the configure step on the next
# build, so nobody has to remember to re-run cmake.
file(GLOB MPSTS_RUNTIME_SOURCES CONFIGURE_DEPENDS
  "${MPSTS_ROOT}/aten_mps/*.cpp"
  "${MPSTS_ROOT}/aten_mps/sim/*.cpp")
file(GLOB MPSTS_RUNTIME_HEADERS CONFIGURE_DEPENDS
  "${MPSTS_ROOT}/aten_mps/*.h"
  "${MPSTS_ROOT}/aten_mps/sim/*.h")

if(MPSTS_RUNTIME_SOURCES)
  set(MPSTS_RUNTIME_AVAILABLE TRUE)
  add_library(mps_threadsafe_runtime STATIC ${MPSTS_RUNTIME_SOURCES} ${MPSTS_RUNTIME_HEADERS})
  target_compile_features(mps_threadsafe_runtime PUBLIC cxx_std_20)
  set_target_properties(mps_threadsafe_runtime PROPERTIES
    CXX_EXTENSIONS OFF
    # The python extension is a shared object that links this archive.
    POSITION_INDEPENDENT_CODE ON)
  # Both spellings work: #include "aten_mps/runtime.h" and #include "runtime.h".
  target_include_directories(mps_threadsafe_runtime PUBLIC
    "$<BUILD_INTERFACE:${MPSTS_ROOT}>"
    "$<BUILD_INTERFACE:${MPSTS_ROOT}/aten_mps>")
  target_link_libraries(mps_threadsafe_runtime PUBLIC Threads::Threads)
  mpsts_target_warnings(mps_threadsafe_runtime)
else()
  # Only while the runtime sources have not landed yet: configure anyway, so the build files
  # exist; targets that need the library are skipped with a message.
  set(MPSTS_RUNTIME_AVAILABLE FALSE)
  message(WARNING "mps_threadsafe: no runtime sources in ${MPSTS_ROOT}/aten_mps yet; "
                  "the runtime library, tests and tools are not built.")
endif()
