# The C++ test suite: every tests/cpp/*.cpp in one Catch2 executable, `runtime_tests`, whose
# test cases are registered with CTest one by one (catch_discover_tests), so `ctest` reports,
# times out and reruns each case on its own.
#
# Catch2 v3 (Ubuntu 24.04, Debian 13, Homebrew) or v2 (Debian 12's `catch2` package); v3 is
# preferred. Point CMake at a Catch2 outside the default prefixes with
# -DCMAKE_PREFIX_PATH=/its/prefix (or -DCatch2_DIR=/its/prefix/lib/cmake/Catch2).
# tests/cpp/catch2_compat.h includes the right header for MPSTS_CATCH2_MAJOR.
#
# Catch2 v3 on Debian 12 beside the system's v2 (how it was tested): bookworm-backports has
# catch2 3.7.1. With that suite in the apt sources (`Suites: bookworm-backports`):
#   apt-get update && cd /tmp && apt-get download libcatch2-dev/bookworm-backports
#   dpkg-deb -x libcatch2-dev_*.deb /opt/catch2-v3
#   CMAKE_PREFIX_PATH=/opt/catch2-v3/usr ./build.sh test
# Ubuntu 24.04: apt-get install catch2 (3.4.0); macOS: brew install catch2.
#
# MPSTS_TEST_LAUNCHER: a command that runs the test binary, both when CTest runs a case and when
# the cases are listed for discovery (for example `setarch x86_64 -R`, see Note [TSan and ASLR]).

include_guard(GLOBAL)

find_package(Catch2 3 QUIET CONFIG)
if(NOT Catch2_FOUND)
  find_package(Catch2 2 QUIET CONFIG)
endif()
if(NOT Catch2_FOUND)
  message(FATAL_ERROR
    "mps_threadsafe: the C++ tests need Catch2 v3 or v2 (CMake package Catch2), found neither.\n"
    "  Debian/Ubuntu: apt-get install catch2     macOS: brew install catch2\n"
    "  Elsewhere: -DCMAKE_PREFIX_PATH=<Catch2 install prefix>, or -DBUILD_TESTING=OFF to skip "
    "the tests.")
endif()
string(REGEX MATCH "^[0-9]+" MPSTS_CATCH2_MAJOR "${Catch2_VERSION}")
message(STATUS "mps_threadsafe: Catch2 ${Catch2_VERSION} (${Catch2_DIR})")

# catch_discover_tests(): v3 installs Catch.cmake next to its package config; v2 does too on
# Debian (/usr/lib/cmake/Catch2/Catch.cmake), other v2 installs under lib/cmake/Catch2 or
# share/Catch2 (contrib/ in the source tree).
find_file(MPSTS_CATCH_CMAKE Catch.cmake
  HINTS "${Catch2_DIR}" "${Catch2_DIR}/../../../share/Catch2" "${Catch2_DIR}/contrib"
  NO_DEFAULT_PATH)
if(NOT MPSTS_CATCH_CMAKE)
  message(FATAL_ERROR "mps_threadsafe: Catch2 ${Catch2_VERSION} at ${Catch2_DIR} has no Catch.cmake "
                      "(catch_discover_tests); install a complete Catch2 package.")
endif()
include("${MPSTS_CATCH_CMAKE}")

file(GLOB MPSTS_TEST_SOURCES CONFIGURE_DEPENDS "${MPSTS_ROOT}/tests/cpp/*.cpp")
if(NOT MPSTS_TEST_SOURCES)
  message(WARNING "mps_threadsafe: no test sources in tests/cpp/ yet; runtime_tests is not built.")
  return()
endif()

# Note [Test names]
# A test case's name is its CTest name. Catch2 v2's discovery script reads the list of names as
# a CMake list, so a ';' in a name splits it into pieces that match no test case; refuse such
# names here, where the file and line can be named, instead of in a puzzling CTest run.
foreach(_source IN LISTS MPSTS_TEST_SOURCES)
  file(STRINGS "${_source}" _bad_names REGEX "TEST_CASE\\(\"[^\"]*;")
  if(_bad_names)
    list(GET _bad_names 0 _bad_name)
    message(FATAL_ERROR "mps_threadsafe: ${_source}: a test case name contains ';', which CTest "
                        "cannot register (Note [Test names] in cmake/tests.cmake): ${_bad_name}")
  endif()
endforeach()

add_executable(runtime_tests ${MPSTS_TEST_SOURCES})
# tests/cpp/main.cpp has the main() (Catch::Session) for both versions: plain Catch2::Catch2.
target_link_libraries(runtime_tests PRIVATE mps_threadsafe_runtime mpsts_exploration Catch2::Catch2)
target_compile_definitions(runtime_tests PRIVATE MPSTS_CATCH2_MAJOR=${MPSTS_CATCH2_MAJOR})
target_include_directories(runtime_tests PRIVATE "${MPSTS_ROOT}/tests/cpp")
set_target_properties(runtime_tests PROPERTIES CXX_EXTENSIONS OFF)
mpsts_target_warnings(runtime_tests)

# Note [TSan and ASLR]
# ThreadSanitizer needs the address-space layout it was built for; on kernels with high mmap
# randomization (vm.mmap_rnd_bits > 28) its binaries die at start with "unexpected memory
# mapping". Running them with ASLR off (setarch <arch> -R, no root needed) avoids that, and
# costs nothing where it was not needed, so TSan builds on Linux always run tests that way.
# catch_discover_tests runs the binary too (to list the cases), so the launcher goes where
# Catch.cmake (v2 and v3) looks for one: the target's CROSSCOMPILING_EMULATOR, which it
# prefixes both to the listing and to every registered test's command.
set(MPSTS_TEST_LAUNCHER "" CACHE STRING
    "Command (;-list) that runs runtime_tests, for discovery and for each test")
if(NOT MPSTS_TEST_LAUNCHER AND "thread" IN_LIST _mpsts_sanitizers
   AND CMAKE_SYSTEM_NAME STREQUAL "Linux")
  find_program(MPSTS_SETARCH setarch)
  if(MPSTS_SETARCH)
    set(MPSTS_TEST_LAUNCHER "${MPSTS_SETARCH};${CMAKE_HOST_SYSTEM_PROCESSOR};-R")
  else()
    message(WARNING "mps_threadsafe: setarch not found; TSan tests may die with 'unexpected "
                    "memory mapping' on kernels with high mmap randomization (util-linux has it)")
  endif()
endif()
if(MPSTS_TEST_LAUNCHER)
  message(STATUS "mps_threadsafe: tests run under: ${MPSTS_TEST_LAUNCHER}")
  set_target_properties(runtime_tests PROPERTIES CROSSCOMPILING_EMULATOR "${MPSTS_TEST_LAUNCHER}")
endif()

# One CTest test per Catch2 test case. --order decl keeps runs reproducible; --warn NoTests
# makes a name that matches no test case a failure, not a silent pass (v2's default); the watchdog in
# main.cpp fails a hung case first (MPSTS_TEST_TIMEOUT_S), CTest's TIMEOUT is the backstop.
# v3 lists the cases when CTest runs (PRE_TEST), so building never runs a test binary; v2's
# Catch.cmake only knows POST_BUILD listing (after each link), run through the same launcher.
# (v3 spells the warning UnmatchedTestSpec and already fails a run of no test case.)
set(_mpsts_discovery_args)
if(MPSTS_CATCH2_MAJOR GREATER_EQUAL 3)
  if(Catch2_VERSION VERSION_GREATER_EQUAL 3.2) # the first Catch.cmake with DISCOVERY_MODE
    list(APPEND _mpsts_discovery_args DISCOVERY_MODE PRE_TEST)
  endif()
  set(_mpsts_no_match_is_failure --warn UnmatchedTestSpec)
else()
  set(_mpsts_no_match_is_failure --warn NoTests)
endif()
catch_discover_tests(runtime_tests
  EXTRA_ARGS --order decl ${_mpsts_no_match_is_failure}
  PROPERTIES TIMEOUT ${MPSTS_TEST_TIMEOUT}
  ${_mpsts_discovery_args})
