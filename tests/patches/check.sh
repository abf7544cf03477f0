#!/usr/bin/env bash
# tests/patches/check.sh — what can be verified of the patch series on Linux, without a Mac,
# against the exact files of the PyTorch v2.14.1 release wheel (tools/fetch_upstream.sh).
#
#   (a) patches/series is well formed; every entry is a git-format patch (.patch) or an
#       anchored edit file (.edits, tools/anchored_edit.py) with a description;
#   (b) exact text: every .patch block either creates a file, renames one without content, or
#       changes a file whose exact v2.14.1 text the wheel carries — and the .patch entries apply,
#       in series order, to those exact files with `git apply` (no fuzz; a hunk without context
#       is refused); every .edits file targets only files the wheel does not carry (otherwise a
#       context patch is possible and required) and every function it anchors on is in the
#       v2.14.1 symbol table (libtorch_cpu/libtorch_python); the torch/mps/batching.py that
#       0017 creates is python/mps_threadsafe/batching.py byte for byte (else: run
#       tools/make_batching_patch.py);
#   (c) the runtime (aten_mps/*.cpp) and every header the series adds or changes compile against
#       the patched v2.14.1 headers; installed headers the series adds or changes compile
#       without the runtime's headers (the wheel does not install them);
#   (d) every Objective-C++ file we add — aten_mps/metal/*.mm, each .mm a patch creates (the
#       whole-file replacements MPSStream.mm/MPSEvent.mm/MPSGuardImpl.mm, the runtime's unity
#       file MPSThreadsafeRuntime.mm, ...) — passes clang++ -fsyntax-only -x objective-c++
#       -Wall -Wextra -Werror against the patched headers and tests/apple_stubs; the unity
#       file lists exactly aten_mps/*.cpp and aten_mps/metal/*.mm; new C++ and Python files
#       compile;
#   (e) the check can fail: each canary in tests/patches/canaries/ must be rejected with the
#       error it names.
# The applier's atomicity and the binary audit are in tools/verify_series_linux.sh.
#
# Usage: tests/patches/check.sh            (from anywhere; exits non-zero on the first failure)
# Env:   UPSTREAM_DIR   tools/fetch_upstream.sh's output (default build/upstream-v2.14.1; fetched
#                       when missing)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
patches=$root/patches
stubs=$root/tests/apple_stubs
canaries=$root/tests/patches/canaries
work=$(mktemp -d "${TMPDIR:-/tmp}/check-patches.XXXXXX")
trap 'rm -rf "$work"' EXIT
# git apply ignores paths outside the current directory when run inside a repository's
# subdirectory: work from the scratch directory, outside any repository.
cd "$work"

fail() {
  echo "check.sh: FAIL: $*" >&2
  exit 1
}
step() { echo "== $*"; }
for cmd in git g++ clang++ python3 llvm-nm; do
  command -v "$cmd" >/dev/null || fail "$cmd is not installed"
done

# ---- v2.14.1, exactly --------------------------------------------------------------------
upstream=${UPSTREAM_DIR:-$root/build/upstream-v2.14.1}
"$root/tools/fetch_upstream.sh" "$upstream" >/dev/null || fail "tools/fetch_upstream.sh failed"
installed=$upstream/installed/include
grep -q '"2\.14\.1"' "$installed/torch/headeronly/version.h" ||
  fail "$upstream does not hold PyTorch 2.14.1 (torch/headeronly/version.h)"

# ---- (a) the series ----------------------------------------------------------------------
step "(a) patches/series and entry format"
series=$patches/series
[ -s "$series" ] || fail "patches/series is missing or empty"
mapfile -t listed < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$series" | awk 'NF')
declare -A seen=()
ordered=()
for entry in "${listed[@]}"; do
  read -r name opts <<<"$entry"
  [ -z "${opts:-}" ] || fail "series: '$entry': options are not supported"
  [[ "$name" == *.patch || "$name" == *.edits ]] || fail "series: '$name' is neither .patch nor .edits"
  [ -f "$patches/$name" ] || fail "series: '$name' does not exist in patches/"
  [ -z "${seen[$name]:-}" ] || fail "series: '$name' is listed twice"
  seen[$name]=1
  ordered+=("$patches/$name")
done
for file in "$patches"/*.patch "$patches"/*.edits; do
  [ -n "${seen[$(basename "$file")]:-}" ] || fail "patches/$(basename "$file") is not listed in patches/series"
done
description_lines() { # the description: after Subject's paragraph, up to the '---' line
  awk '/^Subject: /{s=1; next} s && /^---$/{exit} s' "$1" | awk 'NF' | wc -l
}
for file in "${ordered[@]}"; do
  name=$(basename "$file")
  grep -q '^Subject: ' "$file" || fail "$name: no Subject"
  [ "$(description_lines "$file")" -ge 3 ] || fail "$name: the description has fewer than 3 lines (problem, fix, test)"
  case $name in
    *.patch)
      head -n1 "$file" | grep -q '^From [0-9a-f]\{40\} ' || fail "$name: not a git format-patch file"
      separators=$(sed -n '1,/^diff --git /p' "$file" | grep -c '^---$' || true)
      [ "$separators" -le 1 ] || fail "$name: a line '---' inside the description would cut it short in git am"
      stat=$(git apply --stat "$file" 2>&1) || fail "$name: git apply --stat rejects it: $stat"
      echo "   $name: $(tail -n1 <<<"$stat" | sed 's/^ *//')"
      ;;
    *.edits)
      out=$(python3 "$root/tools/anchored_edit.py" check "$file" 2>&1) || fail "$name: $out"
      echo "   $name: anchored edits of $(python3 "$root/tools/anchored_edit.py" files "$file" | tr '\n' ' ')"
      ;;
  esac
done

# ---- (b) exact text ----------------------------------------------------------------------
step "(b) exact text: .patch hunks only against files in the v2.14.1 wheel, applied exactly"
tree=$work/tree
mkdir -p "$tree"
python3 - "$upstream" "${ordered[@]}" >"$work/blocks" <<'EOF' || fail "hunks against text not seen (above)"
import pathlib, re, sys
tree = pathlib.Path(sys.argv[1])
bad = []
for patch in sys.argv[2:]:
    if not patch.endswith(".patch"):
        continue
    name = pathlib.Path(patch).name
    text = open(patch, encoding="utf-8").read()
    for block in re.split(r"(?m)^(?=diff --git )", text)[1:]:
        m = re.match(r"diff --git a/(\S+) b/(\S+)\n", block)
        head = block.split("\n@@ ", 1)[0]
        hunks = re.findall(r"(?ms)^@@ [^\n]*\n(.*?)(?=^@@ |^diff --git |^-- \n|\Z)", block)
        if "\nnew file mode " in head:
            kind = "new"
        elif "\nrename from " in head and "\n@@ " not in block:
            kind = "rename"  # no content: applies to any text of the file
        elif (tree / m.group(1)).is_file():
            kind = "exact"
            for hunk in hunks:
                if not any(l.startswith(" ") for l in hunk.split("\n")):
                    bad.append(f"{name}: {m.group(1)}: a hunk without context lines")
        else:
            bad.append(f"{name}: {m.group(1)}: changed by context, but its v2.14.1 text is not in the wheel "
                       f"(use a new file, a rename, or an anchored .edits entry)")
            kind = "unseen"
        print(f"{name}\t{kind}\t{m.group(1)}")
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
EOF
# The tree: the wheel's exact files the .patch entries change, at their source paths (headers
# without the install wrapper, the yaml, torch/**/*.py); everything else is read from
# $upstream through the include roots below.
awk -F'\t' '$2=="exact"{print $3}' "$work/blocks" | sort -u | while read -r path; do
  mkdir -p "$tree/$(dirname "$path")"
  cp "$upstream/$path" "$tree/$path"
done
# renamed files: their content does not matter to the patch; a placeholder stands in
awk -F'\t' '$2=="rename"{print $3}' "$work/blocks" | sort -u | while read -r path; do
  [ -e "$tree/$path" ] || { mkdir -p "$tree/$(dirname "$path")"; echo "// v2.14.1 text not in the wheel" >"$tree/$path"; }
done
git -C "$tree" init -q
git -C "$tree" add -A
git -C "$tree" -c user.name=check -c user.email=check@localhost commit -qm "PyTorch v2.14.1 (release wheel)"
for patch in "${ordered[@]}"; do
  [[ "$patch" == *.patch ]] || continue
  name=$(basename "$patch")
  out=$(cd "$tree" && git apply --index --whitespace=nowarn -v "$patch" 2>&1) ||
    fail "$name does not apply exactly to the v2.14.1 files:
$out"
  echo "   $name: $(awk -F'\t' -v n="$name" '$1==n{c[$2]++} END{for (k in c) printf "%s %d  ", k, c[k]}' "$work/blocks")"
done
git -C "$tree" -c user.name=check -c user.email=check@localhost commit -qm "series .patch entries"
(llvm-nm --defined-only "$upstream/installed/lib/libtorch_cpu.dylib"
 llvm-nm --defined-only "$upstream/installed/lib/libtorch_python.dylib") |
  awk '$2=="T" || $2=="t" {print $3}' | sort -u >"$work/symbols"
for edits in "${ordered[@]}"; do
  [[ "$edits" == *.edits ]] || continue
  name=$(basename "$edits")
  while read -r path; do
    [ ! -e "$upstream/$path" ] ||
      fail "$name edits $path, whose exact v2.14.1 text the wheel carries: write a context patch"
  done < <(python3 "$root/tools/anchored_edit.py" files "$edits")
  count=0
  while read -r symbol; do
    grep -qxF "$symbol" "$work/symbols" || fail "$name anchors on $symbol, which is not in v2.14.1's libtorch_cpu/libtorch_python"
    count=$((count + 1))
  done < <(python3 "$root/tools/anchored_edit.py" symbols "$edits" | sort -u)
  echo "   $name: $count anchored functions, each in the v2.14.1 symbol table"
done
# torch.mps ships the mps_threadsafe package's batcher (0017): the file the series creates must
# be python/mps_threadsafe/batching.py byte for byte, and the patch what the generator writes.
step "(b) torch/mps/batching.py (0017) is python/mps_threadsafe/batching.py"
batching_fix="python/mps_threadsafe/batching.py changed: run \`python3 tools/make_batching_patch.py\` and commit patches/0017-mps-batched-module.patch"
[ -f "$tree/torch/mps/batching.py" ] || fail "the series creates no torch/mps/batching.py (patches/0017-mps-batched-module.patch)"
cmp -s "$tree/torch/mps/batching.py" "$root/python/mps_threadsafe/batching.py" ||
  fail "torch/mps/batching.py as patches/0017 creates it differs from python/mps_threadsafe/batching.py
$(diff -u --label "0017's torch/mps/batching.py" --label python/mps_threadsafe/batching.py \
    "$tree/torch/mps/batching.py" "$root/python/mps_threadsafe/batching.py" | head -n 20)
$batching_fix"
out=$(python3 "$root/tools/make_batching_patch.py" --check 2>&1) || fail "$out
$batching_fix"
echo "   torch/mps/batching.py: identical ($(wc -c <"$tree/torch/mps/batching.py") bytes); 0017 is what tools/make_batching_patch.py writes"

# ---- include roots: the patched tree first, then the wheel's installed headers ----------
inc=$tree
cp -R "$root/aten_mps" "$inc/aten/src/ATen/mps/threadsafe" # as tools/build_wheel.sh does
rm -rf "$inc/aten/src/ATen/mps/threadsafe/sim" "$inc/aten/src/ATen/mps/threadsafe/tests"
roots=("$inc/aten/src" "$inc" "$upstream/aten/src" "$upstream" "$upstream/torch/csrc/api/include"
       "$upstream/build/aten/src" "$installed" "$installed/torch/csrc/api/include")
torch_includes=()
torch_system_includes=()
for dir in "${roots[@]}"; do
  torch_includes+=(-I"$dir")
  torch_system_includes+=(-isystem "$dir")
done
python_includes=()
if py=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null) && [ -f "$py/Python.h" ]; then
  python_includes+=(-I"$py")
fi
objcxx=(clang++ -fsyntax-only -x objective-c++ -fobjc-runtime=macosx -fblocks -std=c++20
        -I"$stubs" -include "$stubs/darwin_prelude.h")

# ---- (c) runtime and changed headers compile ---------------------------------------------
step "(c) runtime and new/changed headers compile against the patched v2.14.1 headers"
shopt -s nullglob
runtime_sources=("$root"/aten_mps/*.cpp)
[ ${#runtime_sources[@]} -gt 0 ] || fail "aten_mps/ has no .cpp files"
for src in "${runtime_sources[@]}"; do
  out=$(g++ -std=c++20 -Wall -Wextra -Werror -fsyntax-only "${torch_system_includes[@]}" "$src" 2>&1) ||
    fail "runtime ${src#"$root"/} does not compile:
$out"
done
for header in "$root"/aten_mps/*.h "$root"/aten_mps/metal/metal_device.h; do
  printf '#include "%s"\n' "$header" >"$work/standalone.cpp"
  out=$(g++ -std=c++20 -Wall -Wextra -Werror -fsyntax-only "$work/standalone.cpp" 2>&1) ||
    fail "${header#"$root"/} does not compile on its own:
$out"
done
echo "   runtime: ${#runtime_sources[@]} sources, headers standalone (g++ -Wall -Wextra -Werror)"
include_name() { # repository path -> #include name
  case $1 in
    aten/src/*) echo "${1#aten/src/}" ;;
    *) echo "$1" ;;
  esac
}
mapfile -t changed_headers < <(for patch in "${ordered[@]}"; do
  [[ "$patch" == *.patch ]] && git apply --numstat --include='*.h' "$patch" | awk '{print $3}'
done | sed 's/.* => //' | sort -u)
# installed-header roots without the runtime (the wheel does not carry ATen/mps/threadsafe/)
no_runtime=("${torch_includes[@]}")
mkdir -p "$work/hide"
for header in "${changed_headers[@]}"; do
  [ -f "$inc/$header" ] || continue
  name=$(include_name "$header")
  printf '#include <%s>\n' "$name" >"$work/tu.cpp"
  extra=()
  [[ "$header" == torch/csrc/* ]] && extra=("${python_includes[@]}")
  cxx=yes
  if [ -f "$installed/$name" ]; then
    printf '#include <%s>\n' "$name" >"$work/orig.cpp"
    g++ -std=c++20 -fsyntax-only -I"$stubs" -include "$stubs/darwin_prelude.h" -I"$installed" \
      -I"$installed/torch/csrc/api/include" "${extra[@]}" "$work/orig.cpp" >/dev/null 2>&1 || cxx=no
  elif grep -q '^#error .*Objective-C' "$inc/$header"; then
    cxx=no
  fi
  if [ $cxx = yes ]; then
    out=$(g++ -std=c++20 -fsyntax-only -I"$stubs" -include "$stubs/darwin_prelude.h" "${torch_includes[@]}" \
      "${extra[@]}" "$work/tu.cpp" 2>&1) || fail "$header does not compile as C++ (g++):
$out"
  fi
  out=$("${objcxx[@]}" "${torch_includes[@]}" "${extra[@]}" "$work/tu.cpp" 2>&1) ||
    fail "$header does not compile as Objective-C++ (clang++):
$out"
  # Note [Public MPS headers stand alone]: as an extension sees it, without threadsafe/
  if [[ "$header" == aten/src/ATen/* ]]; then
    mv "$inc/aten/src/ATen/mps/threadsafe" "$work/hide/threadsafe"
    out=$("${objcxx[@]}" "${no_runtime[@]}" "${extra[@]}" "$work/tu.cpp" 2>&1) || {
      mv "$work/hide/threadsafe" "$inc/aten/src/ATen/mps/threadsafe"
      fail "$header needs the runtime's headers, which the wheel does not install:
$out"
    }
    mv "$work/hide/threadsafe" "$inc/aten/src/ATen/mps/threadsafe"
  fi
  echo "   $header: $([ $cxx = yes ] && echo 'C++ and ')Objective-C++"
done

# ---- (d) files the series adds, and our Objective-C++ ------------------------------------
mapfile -t created < <(awk -F'\t' '$2=="new"{print $3}' "$work/blocks")
step "(d) the runtime's unity file lists exactly aten_mps/*.cpp and aten_mps/metal/*.mm"
unity=$inc/aten/src/ATen/mps/MPSThreadsafeRuntime.mm
[ -f "$unity" ] || fail "no aten/src/ATen/mps/MPSThreadsafeRuntime.mm (patch 0001)"
diff <(sed -n 's/^#include "threadsafe\/\(.*\)"$/\1/p' "$unity" | sort) \
  <(cd "$root/aten_mps" && ls -1 *.cpp metal/*.mm | sort) >"$work/unity.diff" ||
  fail "MPSThreadsafeRuntime.mm (0001) and aten_mps/ differ (< listed, > present):
$(cat "$work/unity.diff")"
echo "   MPSThreadsafeRuntime.mm: $(grep -c '^#include "threadsafe/' "$unity") sources"
step "(d) Objective-C++ files we add: clang++ -x objective-c++ -Wall -Wextra -Werror"
our_mm=("$root"/aten_mps/metal/*.mm)
[ ${#our_mm[@]} -gt 0 ] || fail "aten_mps/metal/ has no .mm files"
created_mm=()
for path in "${created[@]}"; do
  [[ "$path" == *.mm ]] && created_mm+=("$inc/$path")
done
for src in "${our_mm[@]}" "${created_mm[@]}"; do
  out=$("${objcxx[@]}" -Wall -Wextra -Werror -DAT_PER_OPERATOR_HEADERS "${torch_system_includes[@]}" "$src" 2>&1) ||
    fail "${src#"$inc"/} does not compile as Objective-C++:
$out"
  echo "   ${src#"$inc"/}" | sed "s#$root/##"
done
step "(d) whole-file replacements keep every symbol v2.14.1 exports from the file they replace"
# Compiled to an object (host ABI; names compared demangled, with libc++/libstdc++ and
# int64_t spellings normalized) and compared with the v2.14.1 exports of the same classes.
mapfile -t replaced < <(awk -F'\t' '$2=="rename"{print $3}' "$work/blocks" | sort -u)
for path in "${replaced[@]}"; do
  out=$("${objcxx[@]/-fsyntax-only/-c}" -DAT_PER_OPERATOR_HEADERS "${torch_system_includes[@]}" \
    -o "$work/replacement.o" "$inc/$path" 2>&1) || fail "$path does not compile to an object:
$out"
  python3 - "$path" "$work/replacement.o" "$upstream/installed/lib/libtorch_cpu.dylib" <<'EOF' ||
import re, subprocess, sys
path, obj, lib = sys.argv[1:]
groups = {  # the functions each v2.14.1 file defines (its header's declarations)
    "aten/src/ATen/mps/MPSStream.mm": r"^at::mps::(MPSStream|MPSStreamImpl)::|^at::mps::(getCurrentMPSStream|getDefaultMPSStream|getStreamFromPool|setCurrentMPSStream|synchronizeAllMPSStreams|dispatch_sync_with_rethrow)\(",
    "aten/src/ATen/mps/MPSEvent.mm": r"^at::mps::(MPSEvent|MPSEventPool)::|^at::mps::getMPSEventPool\(",
    "aten/src/ATen/mps/MPSGuardImpl.mm": r"^at::mps::MPSGuardImpl::",
}
if path not in groups:
    sys.exit(f"{path}: replaced whole, but check.sh does not know which v2.14.1 symbols it defines")
def norm(name):
    name = name.replace("std::__1::", "std::")
    name = re.sub(r"\[abi:[^\]]*\]", "", name)
    return name.replace("unsigned long long", "unsigned long").replace("long long", "long")
def defined(binary, types):
    names = set()
    out = subprocess.run(["llvm-nm", "-C", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in types and ".cold." not in parts[2]:
            names.add(norm(parts[2]))
    return names
want = {n for n in defined(lib, ("T",)) if re.search(groups[path], n)}
missing = sorted(want - defined(obj, ("T", "W")))
for name in missing:
    print(f"   missing: {name}", file=sys.stderr)
if not missing:
    print(f"   {path}: defines all {len(want)} functions v2.14.1 exports from it")
sys.exit(1 if missing else 0)
EOF
    fail "$path (whole-file replacement) lost v2.14.1 symbols (above)"
done
step "(d) C++ and Python files the series adds"
for path in "${created[@]}"; do
  case $path in
    *.cpp | *.cc)
      extra=(-DUSE_MPS)
      [[ "$path" == torch/csrc/* ]] && extra+=("${python_includes[@]}")
      out=$(g++ -std=c++20 -Wall -Wextra -Werror -fsyntax-only -I"$stubs" -include "$stubs/darwin_prelude.h" \
        "${torch_system_includes[@]}" "${extra[@]}" "$inc/$path" 2>&1) ||
        fail "$path does not compile (g++):
$out"
      echo "   $path (g++)"
      ;;
    *.py)
      out=$(python3 -m py_compile "$inc/$path" 2>&1) || fail "$path is not valid Python:
$out"
      echo "   $path (py_compile)"
      ;;
  esac
done
for path in torch/mps/__init__.py; do
  out=$(python3 -m py_compile "$inc/$path" 2>&1) || fail "$path (patched) is not valid Python:
$out"
  echo "   $path (patched, py_compile)"
done

# ---- (e) the check can fail --------------------------------------------------------------
step "(e) canaries are rejected"
canary_files=("$canaries"/*.mm)
[ ${#canary_files[@]} -gt 0 ] || fail "no canaries in tests/patches/canaries"
for canary in "${canary_files[@]}"; do
  expect=$(sed -n 's#^// expect: ##p' "$canary")
  [ -n "$expect" ] || fail "$(basename "$canary"): no '// expect: REGEX' line"
  if out=$("${objcxx[@]}" -Wall -Wextra -Werror "${torch_system_includes[@]}" "$canary" 2>&1); then
    fail "canary $(basename "$canary") compiled: the check could not catch that misuse"
  fi
  grep -Eq "$expect" <<<"$out" || fail "canary $(basename "$canary") failed, but not with /$expect/:
$out"
  echo "   $(basename "$canary"): rejected (/$expect/)"
done

step "not verifiable on Linux (the macOS workflow builds, links and tests): the anchored edits'"
echo "   line texts inside v2.14.1 .mm/.cpp bodies (tools/anchored_edit.py refuses any it does not"
echo "   find as stated), linking, and everything at run time"
echo "check.sh: OK"
