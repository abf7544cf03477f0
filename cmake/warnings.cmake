# Warning flags for this project's own targets (never for third-party code).
#
# -Werror is an option, off by default so that a newer compiler with a new warning never stops
# a user's build; ./build.sh turns it on, so CI keeps the code -Wall -Wextra clean.
#
# Two exceptions, both GCC 12 false positives raised inside libstdc++ after inlining, not in
# our code: the middle-end's flow-based warnings (-Wfree-nonheap-object, -Wrestrict,
# -Wmaybe-uninitialized, ... e.g. GCC bugs 105329, 105651) stay warnings but never errors,
# and sanitizer builds never use -Werror (instrumentation multiplies those reports).

include_guard(GLOBAL)

option(MPSTS_WERROR "Treat compiler warnings as errors (not in sanitizer builds)" OFF)

function(mpsts_target_warnings target)
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4)
    if(MPSTS_WERROR AND NOT MPSTS_SANITIZE)
      target_compile_options(${target} PRIVATE /WX)
    endif()
    return()
  endif()
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(MPSTS_WERROR AND NOT MPSTS_SANITIZE)
    target_compile_options(${target} PRIVATE -Werror)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${target} PRIVATE
        -Wno-error=free-nonheap-object -Wno-error=restrict -Wno-error=maybe-uninitialized
        -Wno-error=array-bounds -Wno-error=stringop-overflow -Wno-error=stringop-overread
        -Wno-error=use-after-free -Wno-error=dangling-pointer)
    endif()
  endif()
endfunction()
