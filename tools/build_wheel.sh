#!/usr/bin/env bash
# build_wheel.sh — build the thread-safe MPS PyTorch wheel (torch 2.14.1+mpsts) on macOS arm64.
#
#   tools/build_wheel.sh [--no-tests]
#
# Steps, each failing loudly:
#   1. PyTorch v2.14.1 with submodules: $PYTORCH_SRC if set (a git checkout of v2.14.1),
#      else cloned into build/pytorch. The checkout is reset to v2.14.1 on a branch `mpsts`
#      each run (its build/ directory is kept, so rebuilds are incremental).
#   2. aten_mps/ (the runtime, without sim/ and tests) is copied to aten/src/ATen/mps/threadsafe/.
#   3. patches/series is applied, one commit per patch (tools/apply_series.sh: exact, then
#      offsets/zero-context, then fuzz; a rejected hunk stops the build and is printed).
#   4. tools/mps_queue_audit.py rewrites raw dispatch_sync on stream queues and then checks
#      that no encoder/command buffer/commit is touched off its stream's queue anywhere in
#      aten/src/ATen/native/mps; the report is saved as dist/mps-queue-audit.txt.
#   5. The wheel is built with MPS on: dist/torch-2.14.1+mpsts-*.whl.
#   6. test/test_mps_threadsafe.py runs against the installed wheel in a fresh venv
#      (it skips itself without an Apple GPU, e.g. on GitHub-hosted runners).
#
# Environment: PYTORCH_SRC, PYTHON (default python3), DIST (default dist/), MAX_JOBS,
# MACOSX_DEPLOYMENT_TARGET (default 14.0), MPSTS_LOCAL_VERSION (default mpsts).
set -euo pipefail

run_tests=1
for arg in "$@"; do
  case "$arg" in
    --no-tests) run_tests=0 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build_wheel: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(uname -s)" != Darwin ] || [ "$(uname -m)" != arm64 ]; then
  echo "build_wheel: the wheel needs macOS on Apple silicon (Darwin arm64) with Xcode;" \
       "this machine is $(uname -s) $(uname -m). On Linux, ./build.sh test runs the checks" \
       "that do not need a Mac." >&2
  exit 1
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=v2.14.1
version=2.14.1+${MPSTS_LOCAL_VERSION:-mpsts}
python=${PYTHON:-python3}
dist=${DIST:-$repo/dist}
src=${PYTORCH_SRC:-$repo/build/pytorch}
mkdir -p "$dist"
step() { printf '\n==> %s\n' "$*"; }

step "PyTorch $tag sources in $src"
if [ ! -d "$src/.git" ]; then
  if [ -n "${PYTORCH_SRC:-}" ]; then
    echo "build_wheel: PYTORCH_SRC=$src is not a git checkout of PyTorch" >&2
    exit 1
  fi
  git clone --branch "$tag" --depth 1 --recurse-submodules --shallow-submodules \
    https://github.com/pytorch/pytorch.git "$src"
fi
git -C "$src" rev-parse -q --verify "$tag^{commit}" >/dev/null || git -C "$src" fetch --depth 1 origin tag "$tag"
# Start from the pristine tag every run: patches are applied as commits on branch mpsts.
git -C "$src" checkout -q -f -B mpsts "$tag"
git -C "$src" clean -fdq -e /build -e '*.egg-info'
git -C "$src" submodule update --init --recursive --depth 1 -q

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
  echo "build_wheel: off-queue touches found (above, and in $dist/mps-queue-audit.txt)" >&2
  exit 1
fi
cat "$dist/mps-queue-audit.txt"

step "Build torch $version (USE_MPS=1)"
(
  cd "$src"
  "$python" -m pip install -q -r requirements.txt
  export USE_MPS=1 USE_CUDA=0 USE_ROCM=0 BUILD_TEST=0 USE_DISTRIBUTED="${USE_DISTRIBUTED:-1}"
  export PYTORCH_BUILD_VERSION="$version" PYTORCH_BUILD_NUMBER=1
  export MACOSX_DEPLOYMENT_TARGET="${MACOSX_DEPLOYMENT_TARGET:-14.0}"
  export MAX_JOBS="${MAX_JOBS:-$(sysctl -n hw.ncpu)}"
  rm -f "$dist"/torch-"$version"-*.whl
  "$python" -m pip wheel . --no-build-isolation --no-deps -w "$dist"
)
wheel=$(ls "$dist"/torch-"$version"-*.whl 2>/dev/null | head -n1)
[ -n "$wheel" ] || { echo "build_wheel: no dist/torch-$version-*.whl was produced" >&2; exit 1; }
echo "wheel: $wheel"

if [ "$run_tests" = 1 ]; then
  step "test/test_mps_threadsafe.py against the installed wheel"
  venv="$dist/.venv-test"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q "$wheel" numpy expecttest pytest
  # Run from outside the source tree so `import torch` is the installed wheel.
  (cd "$dist" && "$venv/bin/python" -c \
     "import torch; print('torch', torch.__version__, '| MPS available:', torch.backends.mps.is_available())" &&
   "$venv/bin/python" "$src/test/test_mps_threadsafe.py" -v)
fi
echo
echo "build_wheel: done. Install with: pip install $wheel"
