#!/usr/bin/env bash
# Sets up the project virtualenv (.venv at the repository root) and installs the
# mps_threadsafe package into it, building the extension against the venv's torch.
# Used by ./build.sh (test, story); safe to re-run: the CMake build directory
# (python/build/<wheel tag>) is kept, so a second run only rebuilds what changed.
#
#   MPSTS_PYTHON=python3.11   interpreter for a new virtualenv (default python3)
#   MPSTS_JOBS=N              parallel compile jobs (default 2)
#   MPSTS_TORCH_SPEC="torch==2.13.0"  torch to install when the venv has none (default torch==2.13.0:
#                             a CPU build; tested: 2.6, 2.11, 2.13, 2.14.1 — python/pyproject.toml)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PY="$VENV/bin/python"

if [[ ! -x $PY ]]; then
  echo "==> creating virtualenv $VENV"
  "${MPSTS_PYTHON:-python3}" -m venv "$VENV"
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "==> installing ${MPSTS_TORCH_SPEC:-torch==2.13.0}"
  "$PY" -m pip install --quiet "${MPSTS_TORCH_SPEC:-torch==2.13.0}"
fi
missing=()
# Build tools (no build isolation: see Note [Torch at build time] in python/CMakeLists.txt), the
# package's dependencies (installed here because of --no-deps below, which keeps pip from
# touching torch), matplotlib so `bench --plot` works out of the box, and pytest.
for module in pybind11 scikit_build_core tqdm tabulate matplotlib pytest; do
  "$PY" -c "import $module" 2>/dev/null || missing+=("${module//_/-}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "==> installing ${missing[*]}"
  "$PY" -m pip install --quiet "${missing[@]}"
fi

echo "==> building and installing mps_threadsafe (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
# --no-build-isolation: build against the torch in this venv, whose ABI the extension must match.
CMAKE_BUILD_PARALLEL_LEVEL="${MPSTS_JOBS:-2}" \
  "$PY" -m pip install --quiet --no-build-isolation --no-deps "$REPO/python"
"$PY" -c "import mps_threadsafe, torch; assert torch.mps_sim.is_available()"
