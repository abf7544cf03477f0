# MPSTS_SANITIZE selects a sanitizer build for everything in the project (runtime, tests,
# tools), so that all code a test runs is instrumented:
#   -DMPSTS_SANITIZE=thread               ThreadSanitizer
#   -DMPSTS_SANITIZE=address,undefined    AddressSanitizer + UBSan; any UB report is fatal
# Empty (default): no sanitizer.

include_guard(GLOBAL)

set(MPSTS_SANITIZE "" CACHE STRING "Sanitizers to build with: '', 'thread' or 'address,undefined'")
set_property(CACHE MPSTS_SANITIZE PROPERTY STRINGS "" "thread" "address,undefined" "address" "undefined")

if(MPSTS_SANITIZE)
  string(REPLACE "," ";" _mpsts_sanitizers "${MPSTS_SANITIZE}")
  foreach(_s IN LISTS _mpsts_sanitizers)
    if(NOT _s MATCHES "^(thread|address|undefined)$")
      message(FATAL_ERROR "MPSTS_SANITIZE: unknown sanitizer '${_s}' "
                          "(use 'thread' or 'address,undefined')")
    endif()
  endforeach()
  if("thread" IN_LIST _mpsts_sanitizers AND "address" IN_LIST _mpsts_sanitizers)
    message(FATAL_ERROR "MPSTS_SANITIZE: ThreadSanitizer cannot be combined with AddressSanitizer")
  endif()

  set(_mpsts_flags "-fsanitize=${MPSTS_SANITIZE}" -fno-omit-frame-pointer -g)
  if("undefined" IN_LIST _mpsts_sanitizers)
    # A UB report must fail the test run, not scroll past.
    list(APPEND _mpsts_flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options(${_mpsts_flags})
  add_link_options(${_mpsts_flags})
  message(STATUS "mps_threadsafe: sanitizers: ${MPSTS_SANITIZE}")
endif()
