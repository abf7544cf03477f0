#!/usr/bin/env bash
# build_wheel.sh — build the thread-safe MPS PyTorch wheel (torch 2.14.1+mpsts) on macOS arm64.
#
#   tools/build_wheel.sh [--no-tests]        (what `./build.sh wheel` runs, and what CI runs)
#
# Steps, each failing loudly:
#   1. PyTorch v2.14.1 with submodules: $PYTORCH_SRC if set (a git checkout of v2.14.1),
#      else a shallow clone (depth 1, shallow submodules) in build/pytorch. The checkout is reset
#      to v2.14.1 on a branch `mpsts` each run (its build/ directory is kept: rebuilds are
#      incremental, and with ccache a fresh checkout rebuilds from the cache).
#   2. aten_mps/ (the runtime, without sim/ and tests) is copied to aten/src/ATen/mps/threadsafe/.
#   3. patches/series is applied, one commit per patch (tools/apply_series.sh PATCH_DIR TREE).
#   4. tools/mps_queue_audit.py rewrites raw dispatch_sync on stream queues and then checks
#      that no encoder/command buffer/commit is touched off its stream's queue anywhere in
#      aten/src/ATen/native/mps; the report is saved as dist/mps-queue-audit.txt.
#   5. The wheel is built with MPS on (the build fails if CMake turned USE_MPS off):
#      dist/torch-2.14.1+mpsts-*.whl.
#   6. A fresh venv installs the wheel, checks that MPS is built in, and runs
#      test/test_mps_threadsafe.py and test/test_mps_batched_module.py (they skip themselves
#      without an Apple GPU, as on GitHub's runners).
#
# Environment:
#   PYTORCH_SRC, PYTHON (default python3), DIST (default dist/), MPSTS_LOCAL_VERSION (mpsts),
#   MACOSX_DEPLOYMENT_TARGET (default 14.0, the official v2.14.1 wheel's),
#   MAX_JOBS (default: the cores, at most one per 2 GiB of memory),
#   MPSTS_BUILD_PROFILE=full|minimal (default full; see Note [Build flags]); any flag set in
#   the environment (e.g. USE_DISTRIBUTED=1) wins over the profile,
#   MPSTS_CCACHE=0 to build without ccache (default: used when `ccache` is on PATH).
#
# Note [Build flags]
# The minimal profile builds what torch needs to run MPS and nothing it does not: no
# distributed (gloo/tensorpipe), no C++ tests, no CUDA/ROCm/XPU, and none of the CPU-only
# kernel libraries MPS never calls: MKLDNN (already off by default on arm64), FBGEMM, NNPACK,
# PyTorch's QNNPACK, XNNPACK (by far the largest: thousands of micro-kernel files) and KleidiAI.
# The CPU ops they accelerate fall back to ATen's own kernels, which is what the tests compare
# MPS against anyway. Kineto (~50 files) stays: torch.profiler is built on it.
# `full` leaves every flag at PyTorch's default except BUILD_TEST=0: close to the official
# v2.14.1 macOS wheel, whose Caffe2Targets.cmake exports USE_DISTRIBUTED/USE_C10D_GLOO/USE_RPC/
# USE_TENSORPIPE and whose libtorch_cpu carries XNNPACK, QNNPACK, NNPACK and KleidiAI code (so
# a minimal wheel has no torch.distributed, and extensions that need it cannot load against it).
# `full` is the default, the wheel a user installs; CI builds the minimal profile
# (MPSTS_BUILD_PROFILE=minimal in the workflow) to fit a 3-core runner: the MPS code is the
# same. Every flag name was checked against the option() list of a 2025-2026 PyTorch
# CMakeLists.txt; setup.py passes USE_*/BUILD_*/CMAKE_* environment variables to CMake as -D
# options.
#
# Note [ccache and Objective-C++]
# PyTorch's CMakeLists (USE_CCACHE, on by default) finds ccache itself, but sets only the C, C++
# and CUDA launchers, and caffe2/CMakeLists.txt enables OBJC/OBJCXX for MPS, so the ~200 .mm
# files of the MPS backend — the files this project patches — would compile uncached. Here all
# four launchers are set (CMAKE_{C,CXX,OBJC,OBJCXX}_COMPILER_LAUNCHER, passed by setup.py as
# -D cache variables, so they exist before the torch_cpu target is created; CMake's own reading
# of the environment variable happens only when OBJCXX is enabled, too late for torch_cpu, as a
# mock of that CMake layout shows with CMake 4.4), and after the build the script checks that
# a .mm compile command went through ccache. CCACHE_BASEDIR is the PyTorch tree, so caches
# made in another checkout path still hit.
#
# Kept bash 3.2 compatible (macOS's /bin/bash): no associative arrays, mapfile, ${x,,}, |&.
set -euo pipefail

run_tests=1
for arg in "$@"; do
  case "$arg" in
    --no-tests) run_tests=0 ;;
    -h|--help) awk 'NR > 1 && /^set -euo/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "build_wheel: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

die() { echo "build_wheel: $*" >&2; exit 1; }
step() { printf '\n==> %s\n' "$*"; }
# default_env NAME VALUE: export NAME=VALUE unless the environment already gives NAME a value.
default_env() {
  if [ -z "$(printenv "$1" || true)" ]; then export "$1=$2"; fi
}

if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != arm64 ]; then
  die "the wheel needs macOS on Apple silicon (Darwin arm64) with Xcode; this machine is" \
      "$(uname -s) $(uname -m). On Linux, ./build.sh test runs the checks that do not need a Mac."
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=v2.14.1
version=2.14.1+${MPSTS_LOCAL_VERSION:-mpsts}
python=${PYTHON:-python3}
dist=${DIST:-$repo/dist}
src=${PYTORCH_SRC:-$repo/build/pytorch}
mkdir -p "$dist"
dist=$(cd "$dist" && pwd -P)

step "PyTorch $tag sources in $src"
if [ ! -d "$src/.git" ]; then
  [ -z "${PYTORCH_SRC:-}" ] || die "PYTORCH_SRC=$src is not a git checkout of PyTorch"
  mkdir -p "$(dirname "$src")"
  git clone --branch "$tag" --depth 1 --recurse-submodules --shallow-submodules --jobs 4 \
    https://github.com/pytorch/pytorch.git "$src"
fi
src=$(cd "$src" && pwd -P)
git -C "$src" rev-parse -q --verify "$tag^{commit}" >/dev/null || git -C "$src" fetch --depth 1 origin tag "$tag"
# Start from the pristine tag every run: patches are applied as commits on branch mpsts.
git -C "$src" checkout -q -f -B mpsts "$tag"
# Note [Deterministic commits]: every commit made on mpsts (runtime copy, patches, audit fix) is
# dated like the tag's commit, so the same inputs give the same HEAD. Its SHA is compiled into
# libtorch_cpu (COMMIT_SHA in torch.__config__.show(), via caffe2/core/macros.h) and becomes
# torch.version.git_version: stable, it names the exact patched tree, and the files that include
# macros.h stay ccache hits instead of missing on every run.
GIT_AUTHOR_DATE=$(git -C "$src" log -1 --format=%cI "$tag^{commit}")
GIT_COMMITTER_DATE=$GIT_AUTHOR_DATE
export GIT_AUTHOR_DATE GIT_COMMITTER_DATE
git -C "$src" clean -fdq -e /build -e '*.egg-info'
git -C "$src" submodule update --init --recursive --depth 1 --jobs 4 -q

step "Copy the runtime (aten_mps/) into aten/src/ATen/mps/threadsafe/"
dest="$src/aten/src/ATen/mps/threadsafe"
rm -rf "$dest"
mkdir -p "$dest"
(cd "$repo/aten_mps" && find . -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.mm' \) \
   -not -path './sim/*' -not -path './tests/*' -print0 | \
   while IFS= read -r -d '' f; do mkdir -p "$dest/$(dirname "$f")"; cp "$f" "$dest/$f"; done)
git -C "$src" add -A aten/src/ATen/mps/threadsafe
git -C "$src" -c user.name="mps-threadsafe build" -c user.email=build@localhost \
  commit -q -m "Add the thread-safe MPS runtime (copied from aten_mps/)"
echo "$(find "$dest" -type f | wc -l | tr -d ' ') files"

step "Apply patches/series"
"$repo/tools/apply_series.sh" "$repo/patches" "$src"

step "Audit stream-queue discipline in aten/src/ATen/native/mps"
"$python" "$repo/tools/mps_queue_audit.py" --fix "$src"
if ! git -C "$src" diff --quiet; then
  git -C "$src" -c user.name="mps-threadsafe build" -c user.email=build@localhost \
    commit -qam "[MPS] Enter stream queues with dispatch_sync_with_rethrow (tools/mps_queue_audit.py --fix)"
  git -C "$src" show --stat HEAD | tail -n +5
  git -C "$src" format-patch -1 --stdout HEAD > "$dist/mps-queue-audit-fix.patch"
fi
if ! "$python" "$repo/tools/mps_queue_audit.py" --check "$src" > "$dist/mps-queue-audit.txt"; then
  cat "$dist/mps-queue-audit.txt"
  die "off-queue touches found (above, and in $dist/mps-queue-audit.txt)"
fi
cat "$dist/mps-queue-audit.txt"

step "Build configuration"
# Always: MPS on, no GPU back ends but MPS, no C++ tests.
export USE_MPS=1 USE_CUDA=0 USE_ROCM=0 USE_XPU=0 BUILD_TEST=0
profile=${MPSTS_BUILD_PROFILE:-full}
case "$profile" in
  minimal)
    for flag in USE_DISTRIBUTED USE_MKLDNN USE_FBGEMM USE_NNPACK USE_PYTORCH_QNNPACK \
                USE_XNNPACK USE_KLEIDIAI; do
      default_env "$flag" 0
    done ;;
  full) ;;
  *) die "MPSTS_BUILD_PROFILE=$profile: expected minimal or full" ;;
esac
default_env MACOSX_DEPLOYMENT_TARGET 14.0
cores=$(sysctl -n hw.ncpu)
jobs_by_memory=$(( $(sysctl -n hw.memsize) / (2 * 1024 * 1024 * 1024) ))
[ "$jobs_by_memory" -ge 1 ] || jobs_by_memory=1
if [ "$jobs_by_memory" -lt "$cores" ]; then cores=$jobs_by_memory; fi
default_env MAX_JOBS "$cores"
export PYTORCH_BUILD_VERSION="$version" PYTORCH_BUILD_NUMBER=1

ccache_bin=""
if [ "${MPSTS_CCACHE:-1}" != 0 ] && ccache_bin=$(command -v ccache); then
  # Note [ccache and Objective-C++]
  for lang in C CXX OBJC OBJCXX; do
    default_env "CMAKE_${lang}_COMPILER_LAUNCHER" "$ccache_bin"
  done
  default_env CCACHE_BASEDIR "$src"
  echo "ccache: $("$ccache_bin" --version | head -n1) at $ccache_bin (base dir $CCACHE_BASEDIR)"
else
  ccache_bin=""
  export USE_CCACHE=0
  echo "ccache: not used (MPSTS_CCACHE=0 or not installed; 'brew install ccache' makes rebuilds fast)"
fi
echo "profile $profile; MAX_JOBS=$MAX_JOBS; MACOSX_DEPLOYMENT_TARGET=$MACOSX_DEPLOYMENT_TARGET"
env | grep -E '^(USE|BUILD)_[A-Z0-9_]*=' | sort | tr '\n' ' ' || true
echo

step "Build torch $version (USE_MPS=1)"
(
  cd "$src"
  "$python" -m pip install -q -r requirements.txt
  rm -f "$dist"/torch-"$version"-*.whl
  "$python" -m pip wheel . --no-build-isolation --no-deps -w "$dist"
)
wheel=""
for candidate in "$dist"/torch-"$version"-*.whl; do
  if [ -f "$candidate" ]; then wheel=$candidate; break; fi
done
[ -n "$wheel" ] || die "no dist/torch-$version-*.whl was produced"
echo "wheel: $wheel ($(du -h "$wheel" | cut -f1))"

# CMake turns USE_MPS off without an error when it cannot find MPSGraph (no Xcode, old SDK).
cache="$src/build/CMakeCache.txt"
if ! grep -q '^USE_MPS:BOOL=ON' "$cache"; then
  rm -f "$wheel"
  die "CMake configured USE_MPS=OFF (see 'MPSGraph framework' in the CMake output): check Xcode" \
      "and its macOS SDK. The wheel, which has no MPS, was deleted."
fi

if [ -n "$ccache_bin" ]; then
  step "ccache"
  if command -v ninja >/dev/null 2>&1 && [ -f "$src/build/build.ninja" ]; then
    mm_command=$(ninja -C "$src/build" -t commands 2>/dev/null | grep -m1 -E ' -c [^ ]*\.mm$' || true)
    launcher=${mm_command%% *}
    if [ -z "$mm_command" ]; then
      echo "no .mm compile command found in build.ninja: cannot tell whether .mm files were cached"
    elif [ "${launcher##*/}" = ccache ]; then
      echo "Objective-C++ (.mm) compiles go through ccache"
    else
      echo "WARNING: .mm files compiled without ccache: ${mm_command%% -*} ..." >&2
      if [ -n "${GITHUB_ACTIONS:-}" ]; then
        echo "::warning title=ccache::Objective-C++ files were compiled without ccache; the next build will recompile them"
      fi
    fi
  fi
  "$ccache_bin" --show-stats || true
fi

if [ "$run_tests" = 1 ]; then
  step "test/test_mps_threadsafe.py, test/test_mps_batched_module.py against the installed wheel"
  venv="$dist/.venv-test"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q "$wheel" numpy expecttest pytest
  # Run from outside the source tree so `import torch` is the installed wheel.
  (cd "$dist" && "$venv/bin/python" -c "
import torch
assert torch.backends.mps.is_built(), 'this torch was built without MPS'
print('torch', torch.__version__, '| MPS built: True | MPS available:', torch.backends.mps.is_available())" &&
   "$venv/bin/python" "$src/test/test_mps_threadsafe.py" -v &&
   "$venv/bin/python" "$src/test/test_mps_batched_module.py" -v)
fi
echo
echo "build_wheel: done. Install with: pip install $wheel"
