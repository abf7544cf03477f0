#!/usr/bin/env bash
# verify_series_linux.sh [TORCH_HEADERS] — the Linux checks of patches 0010- (part B):
#  1. they apply, in series order, to the exact v2.14.1 OperationUtils.h (and the new files they
#     create), through tools/apply_series.sh (the applier the wheel build uses); with
#     UPSTREAM_EXCERPTS=DIR (upstream .mm regions read with the search tool, never committed:
#     no upstream file lives in this repository) also to those upstream files;
#  2. with UPSTREAM_EXCERPTS, tools/mps_queue_audit.py finds the known off-queue touches before
#     the series and none after it;
#  3. the new C++ (torch/csrc/mps/Threadsafe.cpp, operations/RecordStream.mm,
#     SharedObjects.mm) compiles with g++ and clang++ -std=c++20 -Wall -Wextra -Werror against
#     the v2.14.1 headers, the runtime headers (aten_mps/) and part A's MPSThreadsafe.h;
#  4. the Python files and test/test_mps_threadsafe.py byte-compile.
# TORCH_HEADERS: v2.14.1 headers (default build/torch-headers, unpacked there with
# ../shared/tools/torch-headers.sh when missing).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
headers=${1:-${TORCH_HEADERS:-$repo/build/torch-headers}}
if [ ! -f "$headers/ATen/native/mps/OperationUtils.h" ]; then
  # The cache tests/patches/check.sh uses too.
  rm -rf "$headers.partial"
  "$repo/../shared/tools/torch-headers.sh" "$headers.partial" >/dev/null
  mv "$headers.partial" "$headers"
fi
[ -f "$headers/ATen/native/mps/OperationUtils.h" ] || { echo "verify: no v2.14.1 headers in $headers" >&2; exit 1; }

# The source file the installed header was made from: drop the wrapper install adds.
source_header() {
  sed -e '1{/^#if !defined(TORCH_STABLE_ONLY)/d}' "$1" | awk '{l[n++]=$0} END {
    e=n; if (e>=3 && l[e-1] ~ /^#endif  \/\/ !defined\(TORCH_STABLE_ONLY\)/ && l[e-2] ~ /^#error/ && l[e-3] ~ /^#else/) e-=3;
    while (e>0 && l[e-1]=="") e--; for (i=0;i<e;i++) print l[i] }'
}

tree="$work/tree"
mkdir -p "$tree/aten/src/ATen/native/mps"
excerpts=${UPSTREAM_EXCERPTS:-}
if [ -n "$excerpts" ]; then
  cp -R "$excerpts/." "$tree/"
  rm -f "$tree/README.md"
fi
source_header "$headers/ATen/native/mps/OperationUtils.h" > "$tree/aten/src/ATen/native/mps/OperationUtils.h"
git -C "$tree" init -q
git -C "$tree" add -A
git -C "$tree" -c user.name=verify -c user.email=verify@localhost commit -qm "upstream excerpts"

if [ -z "$excerpts" ]; then
  echo "== SKIPPED: audit before the series and hunks against upstream .mm files (set"
  echo "   UPSTREAM_EXCERPTS to a folder of upstream sources; the macOS workflow checks them)"
elif python3 "$repo/tools/mps_queue_audit.py" --check "$tree" > "$work/before.txt"; then
  cat "$work/before.txt"; echo "verify: the audit found nothing before the series: it cannot fail" >&2; exit 1
else
  grep -c OFF-QUEUE "$work/before.txt" | sed 's/^/off-queue touches before: /'
fi

echo "== apply patches 0010- of patches/series"
mkdir -p "$work/patches"
grep -E '^00(1[0-9]|[2-9][0-9])-' "$repo/patches/series" > "$work/patches/series"
while read -r p; do cp "$repo/patches/$p" "$work/patches/"; done < "$work/patches/series"
if [ -z "$excerpts" ]; then
  # Without upstream sources, apply only what exists here: the v2.14.1 header and the files
  # the patches create.
  while read -r p; do
    includes=(--include=aten/src/ATen/native/mps/OperationUtils.h)
    while read -r created; do includes+=("--include=$created"); done < <(
      git apply --summary "$work/patches/$p" | sed -n 's/^ create mode [0-9]* //p')
    git -C "$tree" apply --whitespace=nowarn "${includes[@]}" "$work/patches/$p"
    echo "applied (header + new files): $p"
  done < "$work/patches/series"
else
  "$repo/tools/apply_series.sh" "$work/patches" "$tree"
fi

echo "== audit after the series"
python3 "$repo/tools/mps_queue_audit.py" --check "$tree"

echo "== compile the new C++"
inc="$work/inc"
mkdir -p "$inc/ATen/mps" "$inc/ATen/native/mps" "$inc/mock/ATen/native/mps"
ln -s "$repo/aten_mps" "$inc/ATen/mps/threadsafe"
awk '/^\+\+\+ b\/aten\/src\/ATen\/mps\/MPSThreadsafe.h/{f=1;next} f&&/^diff --git/{f=0} f&&/^@@/{next} f{print substr($0,2)}' \
  "$repo"/patches/0002-*.patch > "$inc/ATen/mps/MPSThreadsafe.h"
[ -s "$inc/ATen/mps/MPSThreadsafe.h" ] || { echo "verify: patch 0002 provides no ATen/mps/MPSThreadsafe.h" >&2; exit 1; }
cp "$tree/aten/src/ATen/native/mps/SharedObjects.h" "$inc/ATen/native/mps/"
cat > "$inc/mock/ATen/native/mps/OperationUtils.h" <<'MOCK'
// What SharedObjects.mm uses from OperationUtils.h (the real one needs the macOS SDK).
#pragma once
#include <c10/util/Exception.h>
namespace at::native::mps {
struct MPSCachedGraph { virtual ~MPSCachedGraph() = default; void* graph() const { return nullptr; } };
}
MOCK
pyinc=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
pybind=$(python3 -c 'import pybind11; print(pybind11.get_include())')
common=(-std=c++20 -fsyntax-only -Wall -Wextra -Werror -I"$inc" -isystem "$headers"
        -isystem "$headers/torch/csrc/api/include" -isystem "$repo/tests/apple_stubs")
for cxx in g++ clang++; do
  "$cxx" "${common[@]}" -DUSE_MPS -isystem "$pyinc" -isystem "$pybind" "$tree/torch/csrc/mps/Threadsafe.cpp"
  "$cxx" "${common[@]}" -DAT_PER_OPERATOR_HEADERS -x c++ "$tree/aten/src/ATen/native/mps/operations/RecordStream.mm"
  "$cxx" "${common[@]}" -I"$inc/mock" -x c++ "$tree/aten/src/ATen/native/mps/SharedObjects.mm"
  echo "$cxx: ok"
done

echo "== byte-compile the Python"
python3 -m py_compile "$tree/torch/mps/_streams.py" "$tree/torch/mps/_threadsafe.py" "$tree/test/test_mps_threadsafe.py"
echo "verify_series_linux: ok"
