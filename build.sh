#!/usr/bin/env bash
# build.sh: build, test and run torch-mps-threadsafe. One function per subcommand.
#
#   ./build.sh          set up (packages, .venv), build and run the main job (demo + story)
#   ./build.sh test     every test: C++ (normal, ThreadSanitizer, AddressSanitizer+UBSan
#                       builds, through CTest), then the Python tests once python/ exists
#   ./build.sh story    the story suite (python/) on mps or else mps_sim: thread safety off, then on
#   ./build.sh bench    build Release and run the microbenchmark (tools/microbench)
#   ./build.sh soak     schedule-exploration soak (tools/soak, docs/reliability.md); needs only
#                       cmake and a C++20 compiler. No arguments: every pair of ops x 100 seeds,
#                       then 12,500 random 8-thread rounds (100,000 op-rounds); arguments go to
#                       tools/soak (e.g. ./build.sh soak soak --threads 8 --minutes 8)
#   ./build.sh wheel    the patched PyTorch wheel (macOS arm64 only)
#   ./build.sh clean    remove build/
#
# Environment:
#   CXX=clang++         compiler for every build (default g++); a build directory made with
#                       another compiler is rebuilt from scratch
#   MPSTS_JOBS=N        parallel compile jobs (default 2)
#   MPSTS_WERROR=OFF    do not treat warnings as errors (default ON: the code is -Wall -Wextra
#                       clean, and CI keeps it so)
#   Extra arguments after `bench` go to tools/microbench (e.g. ./build.sh bench --quick).

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"

JOBS="${MPSTS_JOBS:-2}"
CXX_COMPILER="${CXX:-g++}"
WERROR="${MPSTS_WERROR:-ON}"
BUILD_ROOT="$REPO/build"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---- Prerequisites ---------------------------------------------------------------------------

APT_UPDATED=0

# Installs Debian packages when running as root with apt-get; otherwise names what is missing
# and how to install it, and exits 1.
install_packages() {
  local packages=("$@")
  [[ ${#packages[@]} -eq 0 ]] && return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing missing packages: ${packages[*]}"
    if [[ $APT_UPDATED -eq 0 ]]; then
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
    return 0
  fi
  printf 'error: missing prerequisites: %s\n' "${packages[*]}" >&2
  if command -v apt-get >/dev/null 2>&1; then
    printf 'install them with:\n  sudo apt-get update && sudo apt-get install -y %s\n' \
      "${packages[*]}" >&2
    printf '(or run ./build.sh as root, which installs them)\n' >&2
  else
    printf 'install them with your package manager (Catch2 must be version 2: <catch2/catch.hpp>)\n' >&2
  fi
  exit 1
}

have_catch2() {
  if command -v dpkg >/dev/null 2>&1; then
    dpkg -s catch2 >/dev/null 2>&1
  else
    local dir
    for dir in /usr/include /usr/local/include /opt/homebrew/include; do
      [[ -f $dir/catch2/catch.hpp ]] && return 0
    done
    return 1
  fi
}

# cmake >= 3.20, make, the C++ compiler, Catch2 v2.
require_build_tools() {
  local missing=()
  if ! command -v cmake >/dev/null 2>&1; then
    missing+=(cmake)
  else
    local version
    version=$(cmake --version | sed -n 's/^cmake version \([0-9]*\.[0-9]*\).*/\1/p')
    if [[ -n $version ]] && ! printf '3.20\n%s\n' "$version" | sort -V -C; then
      die "cmake $version is too old; 3.20 or newer is needed"
    fi
  fi
  command -v make >/dev/null 2>&1 || missing+=(make)
  if ! command -v "$CXX_COMPILER" >/dev/null 2>&1; then
    case "$CXX_COMPILER" in
      clang++*) missing+=(clang) ;;
      *) missing+=(g++) ;;
    esac
  fi
  have_catch2 || missing+=(catch2)
  install_packages "${missing[@]}"
}

# ---- Building --------------------------------------------------------------------------------

# The build variants: directory name -> CMake build type and sanitizers.
variant_build_type() {
  case "$1" in
    release) echo Release ;; # Release with assert() kept (MPSTS_ASSERTS, default ON)
    tsan | asan) echo RelWithDebInfo ;;
    *) die "unknown build variant $1" ;;
  esac
}
# Optimization of each variant: sanitizer builds use -O1 (what the sanitizers' docs advise:
# readable reports, and a quarter less compile time than -O2 on the 2-core CI machine).
variant_flags() {
  case "$1" in
    release) echo "" ;;
    tsan | asan) echo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g" ;;
  esac
}
variant_sanitizers() {
  case "$1" in
    release) echo "" ;;
    tsan) echo "thread" ;;
    asan) echo "address,undefined" ;;
  esac
}

# Configures (if needed) and builds build/<variant>: the given targets, or all of them.
build_variant() {
  local variant=$1 dir="$BUILD_ROOT/$1"
  shift
  local targets=()
  [[ $# -gt 0 ]] && targets=(--target "$@")
  local compiler
  compiler=$(command -v "$CXX_COMPILER") || die "compiler '$CXX_COMPILER' not found"
  if [[ -f $dir/CMakeCache.txt ]]; then
    local cached
    cached=$(sed -n 's/^CMAKE_CXX_COMPILER:[A-Z]*=//p' "$dir/CMakeCache.txt")
    if [[ $(readlink -f "$cached" 2>/dev/null) != $(readlink -f "$compiler") ]]; then
      log "build/$variant was configured with $cached; starting it afresh with $compiler"
      rm -rf "$dir"
    fi
  fi
  local flags
  flags=$(variant_flags "$variant")
  log "configuring build/$variant ($(variant_build_type "$variant") build, $CXX_COMPILER)"
  cmake -S "$REPO" -B "$dir" \
    -DCMAKE_BUILD_TYPE="$(variant_build_type "$variant")" \
    -DCMAKE_CXX_COMPILER="$compiler" \
    -DMPSTS_SANITIZE="$(variant_sanitizers "$variant")" \
    -DMPSTS_WERROR="$WERROR" ${flags:+"$flags"} || return 1
  log "building build/$variant${targets[*]:+ (${targets[*]:1})} with -j$JOBS"
  cmake --build "$dir" -j "$JOBS" "${targets[@]}" || return 1
}

# ---- Running the C++ tests -------------------------------------------------------------------

# ThreadSanitizer needs the address-space layout it was built for; on kernels with high mmap
# randomization (vm.mmap_rnd_bits > 28) its binaries die with "unexpected memory mapping".
# Probe once; if so, run them with ASLR off (setarch -R), which needs no root.
tsan_launcher() {
  local binary=$1 output
  if output=$("$binary" --list-test-names-only 2>&1 >/dev/null) &&
    ! grep -q 'unexpected memory mapping' <<<"$output"; then
    return 0
  fi
  if grep -q 'unexpected memory mapping' <<<"$output"; then
    echo "setarch $(uname -m) -R"
  fi
}

sanitizer_environment() {
  export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 history_size=4 ${TSAN_OPTIONS:-}"
  export ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
}

# Runs CTest in build/<variant>, keeping its log; records Catch2's totals line in cmd_test's
# TEST_TOTALS and TEST_STATUS.
run_ctest() {
  local variant=$1 dir="$BUILD_ROOT/$1" launcher=""
  if [[ $variant == tsan && -x $dir/runtime_tests ]]; then
    launcher=$(tsan_launcher "$dir/runtime_tests")
    [[ -n $launcher ]] && log "ThreadSanitizer needs ASLR off on this kernel: running under '$launcher'"
  fi
  log "running the C++ tests of build/$variant"
  local status=0
  # shellcheck disable=SC2086 # $launcher is a command prefix, split on purpose
  $launcher ctest --test-dir "$dir" --no-tests=error --verbose 2>&1 | tee "$dir/ctest.log" ||
    status=$?
  local totals
  totals=$(sed -E 's/^[0-9]+: //' "$dir/ctest.log" |
    grep -E '^(All tests passed|test cases:|assertions:)' | tr '\n' ' ' || true)
  TEST_TOTALS[$variant]="${totals:-stopped before Catch2 printed its totals (see $dir/ctest.log)}"
  if [[ $status -eq 0 && -n $totals ]]; then TEST_STATUS[$variant]=passed; else TEST_STATUS[$variant]=FAILED; fi
}

# ---- Python (issue 3) ------------------------------------------------------------------------
# Hook for the Python package: once python/ and tests/python/ exist, the python helper fills
# this in (virtualenv in .venv, pip install ./python, pytest with --quick sizes). Until then it
# says why it does nothing. It must return non-zero when a Python test fails.
run_python_tests() {
  if [[ ! -d python || ! -d tests/python ]]; then
    log "python/ or tests/python/ does not exist yet: no Python tests to run"
    return 0
  fi
  log "Python: virtualenv .venv, pip install ./python (python/install.sh)"
  MPSTS_JOBS="$JOBS" bash python/install.sh || return 1
  log "Python tests (pytest tests/python, quick sizes)"
  # Run from tests/python so the installed package, not the source tree, is imported.
  (cd tests/python && "$REPO/.venv/bin/python" -m pytest -q -p no:cacheprovider .)
}

# The patch series' Linux checks: well formed, header hunks apply to the exact v2.14.1
# headers, new code compiles against them, every .mm passes clang's Objective-C++ syntax check.
run_patch_checks() {
  # clang++ parses our Objective-C++; fmt is included by OperationUtils.h but not shipped in
  # Debian's libtorch-dev.
  local missing=()
  command -v clang++ >/dev/null 2>&1 || missing+=(clang)
  [[ -f /usr/include/fmt/format.h ]] || missing+=(libfmt-dev)
  install_packages "${missing[@]}"
  log "patch series: tests/patches/check.sh"
  tests/patches/check.sh || return 1
  log "patch series: tools/verify_series_linux.sh"
  tools/verify_series_linux.sh || return 1
}

# ---- Subcommands -----------------------------------------------------------------------------

# ./build.sh: build Release, run the main job.
cmd_default() {
  require_build_tools
  build_variant release demo
  run_main_job
}

# The main job: the runtime's threaded demo on the sim device (protections off, then on), then
# the story on mps (or mps_sim), thread safety off, then on, with quick sizes; `./build.sh story`
# runs it at full size.
run_main_job() {
  log "main job 1/2: tools/demo (the same threaded workload, protections off, then on)"
  "$BUILD_ROOT/release/tools/demo"
  log "main job 2/2: the story, thread safety off then on (quick sizes)"
  cmd_story --quick
}

# ---- `story` (issue 3) -----------------------------------------------------------------------
# ./build.sh story [suite options]: the story (python -m mps_threadsafe story) on mps when this
# torch has it, else on mps_sim; twice: thread safety off (upstream's behaviour: set_threadsafe
# False and, on mps_sim, the runtime's protections off, each round in a subprocess whose crash
# is counted), then on. Extra options go to the suite (e.g. --quick, --json story.json).
cmd_story() {
  MPSTS_JOBS="$JOBS" bash python/install.sh
  log "story (python -m mps_threadsafe story $*)"
  (cd "$REPO/tests" && "$REPO/.venv/bin/python" -m mps_threadsafe story "$@")
}

# ./build.sh test: every C++ test in three builds, then the Python tests.
cmd_test() {
  require_build_tools
  sanitizer_environment
  # Associative arrays (bash 4) are declared here, not at the top: `wheel` must still run
  # under macOS's /bin/bash 3.2.
  local -A TEST_TOTALS=() TEST_STATUS=()
  local started=$SECONDS variant failed=0
  for variant in release tsan asan; do
    local variant_started=$SECONDS
    if build_variant "$variant"; then
      run_ctest "$variant"
    else
      TEST_STATUS[$variant]=FAILED
      TEST_TOTALS[$variant]="build failed"
    fi
    TEST_TOTALS[$variant]+=" [$((SECONDS - variant_started)) s]"
  done
  local patches_status=0
  run_patch_checks || patches_status=$?
  local python_status=0
  run_python_tests || python_status=$?

  log "summary ($((SECONDS - started)) s, -j$JOBS, $CXX_COMPILER)"
  for variant in release tsan asan; do
    printf '  %-8s %-7s %s\n' "$variant" "${TEST_STATUS[$variant]}" "${TEST_TOTALS[$variant]}"
    [[ ${TEST_STATUS[$variant]} == passed ]] || failed=1
  done
  if [[ $patches_status -ne 0 ]]; then
    printf '  %-8s %-7s\n' patches FAILED
    failed=1
  else
    printf '  %-8s %-7s %s\n' patches passed "(tests/patches/check.sh, tools/verify_series_linux.sh)"
  fi
  if [[ $python_status -ne 0 ]]; then
    printf '  %-8s %-7s\n' python FAILED
    failed=1
  fi
  if [[ $failed -ne 0 ]]; then
    printf '\nFAILED\n'
    return 1
  fi
  printf '\nall tests passed\n'
}

# ./build.sh bench [microbench options]
cmd_bench() {
  require_build_tools
  build_variant release microbench
  log "microbenchmark (tools/microbench $*)"
  "$BUILD_ROOT/release/tools/microbench" "$@"
}

# ./build.sh soak [tools/soak arguments]: the schedule-exploration soak, built in build/soak
# without the tests (BUILD_TESTING=OFF), so Catch2 is not needed.
cmd_soak() {
  command -v cmake >/dev/null 2>&1 || die "cmake is needed"
  local compiler
  compiler=$(command -v "$CXX_COMPILER") || die "compiler '$CXX_COMPILER' not found"
  local dir="$BUILD_ROOT/soak"
  log "configuring build/soak (Release, tools only, $CXX_COMPILER)"
  cmake -S "$REPO" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$compiler" \
    -DBUILD_TESTING=OFF -DMPSTS_WERROR="$WERROR" >/dev/null
  cmake --build "$dir" -j "$JOBS" --target soak
  if [[ $# -gt 0 ]]; then
    log "tools/soak $*"
    "$dir/tools/soak" "$@"
    return
  fi
  local status=0
  log "tools/soak explore --seeds 100 --quiet (every pair of ops, 10,500 rounds)"
  "$dir/tools/soak" explore --seeds 100 --quiet || status=1
  log "tools/soak soak --threads 8 --rounds 12500 (100,000 checked op-rounds)"
  "$dir/tools/soak" soak --threads 8 --rounds 12500 || status=1
  return $status
}

# ./build.sh wheel: the patched PyTorch wheel, built by tools/build_wheel.sh on macOS arm64.
cmd_wheel() {
  if [[ $(uname -s) != Darwin || $(uname -m) != arm64 ]]; then
    die "./build.sh wheel builds PyTorch with MPS, which needs macOS on Apple silicon (arm64); this is $(uname -s) $(uname -m)"
  fi
  [[ -f tools/build_wheel.sh ]] || die "tools/build_wheel.sh does not exist yet"
  exec bash tools/build_wheel.sh "$@"
}

cmd_clean() {
  log "removing build/"
  rm -rf "$BUILD_ROOT"
}

usage() {
  sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
}

main() {
  local command=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$command" in
    "") cmd_default ;;
    test) cmd_test "$@" ;;
    bench) cmd_bench "$@" ;;
    soak) cmd_soak "$@" ;;
    wheel) cmd_wheel "$@" ;;
    clean) cmd_clean ;;
    story) cmd_story "$@" ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      die "unknown command '$command'"
      ;;
  esac
}

main "$@"
