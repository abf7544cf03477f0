#!/usr/bin/env bash
# tests/patches/check.sh — what can be verified of the patch series on Linux, without a Mac.
#
#   (a) patches/series is well formed; every patch is a git-format patch with a description
#       and parses (git apply --stat);
#   (b) the header parts of the series apply cleanly, in series order, to the exact PyTorch
#       v2.14.1 headers (Debian libtorch-dev 2.14.1, cached in build/torch-headers), both as
#       installed and with the install-time TORCH_STABLE_ONLY wrapper removed (source form);
#   (c) the runtime (aten_mps/*.cpp) and every header the series adds or changes compile
#       against those patched headers (g++ for C++ headers; clang++ Objective-C++ for headers
#       only .mm files include, and for every header as .mm files see it);
#   (d) every Objective-C++ file we add — aten_mps/metal/*.mm and each .mm a patch creates
#       wholesale — passes clang++ -fsyntax-only -x objective-c++ -Wall -Wextra -Werror
#       against the patched v2.14.1 headers and tests/apple_stubs (Apple's declarations);
#   (e) the check can fail: each canary in tests/patches/canaries/ (a misuse of the Metal
#       API or of the v2.14.1 headers) must be rejected with the error it names.
# What it cannot check (hunks against upstream .mm/.cpp files not available here, linking,
# running on a GPU) is listed at the end; the macOS workflow covers it.
#
# Usage: tests/patches/check.sh            (from anywhere; exits non-zero on the first failure)
# Env:   TORCH_HEADERS_CACHE  where the v2.14.1 headers are cached (default build/torch-headers)
#        FMT_INCLUDE          a directory holding fmt/format.h (default: /usr/include, .venv torch)
#        TORCH_HEADERS_TOOL   the fetch script (default ../shared/tools/torch-headers.sh)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
patches=$root/patches
stubs=$root/tests/apple_stubs
canaries=$root/tests/patches/canaries
cache=${TORCH_HEADERS_CACHE:-$root/build/torch-headers}
tool=${TORCH_HEADERS_TOOL:-$root/../shared/tools/torch-headers.sh}
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
for cmd in git g++ clang++ python3; do
  command -v "$cmd" >/dev/null || fail "$cmd is not installed"
done

# ---- v2.14.1 headers ---------------------------------------------------------------------
if [ ! -f "$cache/ATen/mps/MPSStream.h" ]; then
  step "fetching PyTorch v2.14.1 headers into $cache"
  [ -x "$tool" ] || fail "no headers in $cache and no fetch script at $tool"
  rm -rf "$cache.partial"
  "$tool" "$cache.partial" || fail "could not fetch the v2.14.1 headers (apt needs root)"
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
fi
grep -q '"2\.14\.1"' "$cache/torch/headeronly/version.h" ||
  fail "$cache does not hold the PyTorch 2.14.1 headers (torch/headeronly/version.h)"

# ---- (a) the series ----------------------------------------------------------------------
step "(a) patches/series and patch format"
series=$patches/series
[ -s "$series" ] || fail "patches/series is missing or empty"
mapfile -t listed < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$series" | awk 'NF')
[ ${#listed[@]} -gt 0 ] || fail "patches/series lists no patch"
declare -A seen=()
ordered=()
for entry in "${listed[@]}"; do
  read -r name opts <<<"$entry"
  [ -z "${opts:-}" ] || [ "$opts" = "-p1" ] || fail "series: '$entry': only 'NAME' or 'NAME -p1' is supported"
  [[ "$name" == *.patch ]] || fail "series: '$name' is not a .patch file"
  [ -f "$patches/$name" ] || fail "series: '$name' does not exist in patches/"
  [ -z "${seen[$name]:-}" ] || fail "series: '$name' is listed twice"
  seen[$name]=1
  ordered+=("$patches/$name")
done
for file in "$patches"/*.patch; do
  [ -n "${seen[$(basename "$file")]:-}" ] || fail "patches/$(basename "$file") is not listed in patches/series"
done
for patch in "${ordered[@]}"; do
  name=$(basename "$patch")
  head -n1 "$patch" | grep -q '^From [0-9a-f]\{40\} ' || fail "$name: not a git format-patch file (no 'From <sha>' line)"
  grep -q '^Subject: ' "$patch" || fail "$name: no Subject"
  git mailinfo "$work/msg" "$work/body" <"$patch" >"$work/info" || fail "$name: git mailinfo cannot parse it"
  [ "$(awk 'NF' "$work/msg" | wc -l)" -ge 3 ] || fail "$name: the description has fewer than 3 lines (problem, fix, test)"
  # git am ends the description at the first line that is exactly '---'
  separators=$(sed -n '1,/^diff --git /p' "$patch" | grep -c '^---$' || true)
  [ "$separators" -le 1 ] || fail "$name: a line '---' inside the description would cut it short in git am"
  stat=$(git apply --stat "$patch" 2>&1) || fail "$name: git apply --stat rejects it: $stat"
  [ -n "$stat" ] && ! grep -q '^ *0 files changed' <<<"$stat" || fail "$name: touches no file"
  echo "   $name: $(tail -n1 <<<"$stat" | sed 's/^ *//')"
done

# ---- (b) header hunks against the exact v2.14.1 headers ----------------------------------
# Each variant is an overlay in source layout (paths as in the PyTorch repository) holding the
# headers the series touches; everything else is read from the cache (include order below).
step "(b) header hunks apply to the v2.14.1 headers (installed form and source form)"
header_globs=(--include='*.h' --include='*.hpp' --include='*.cuh')
installed_name() { # repository path -> path under the installed include/ directory
  case $1 in
    aten/src/*) echo "${1#aten/src/}" ;;
    *) echo "$1" ;;
  esac
}
mapfile -t touched_headers < <(for patch in "${ordered[@]}"; do
  git apply --numstat "${header_globs[@]}" "$patch" | awk '{print $3}'
done | sed 's/ => /\n/' | sort -u)
for variant in installed source; do
  mkdir -p "$work/$variant"
  for header in "${touched_headers[@]}"; do
    from=$cache/$(installed_name "$header")
    if [ -f "$from" ]; then
      mkdir -p "$work/$variant/$(dirname "$header")"
      cp "$from" "$work/$variant/$header"
    fi
  done
done
# The installed headers are wrapped in '#if !defined(TORCH_STABLE_ONLY) ...' at install time;
# hunks must apply with and without that wrapper.
python3 - "$work/source" <<'EOF'
import pathlib, re, sys
head = "#if !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)\n"
tail = re.compile(r"\n#else\n#error [^\n]*\n#endif[^\n]*\n?$")
for path in pathlib.Path(sys.argv[1]).rglob("*.h"):
    text = path.read_text(errors="surrogateescape")
    if text.startswith(head) and tail.search(text):
        path.write_text(tail.sub("\n", text[len(head):]), errors="surrogateescape")
EOF
for patch in "${ordered[@]}"; do
  name=$(basename "$patch")
  touched=$(git apply --numstat "${header_globs[@]}" "$patch" | awk '{print $3}')
  [ -n "$touched" ] || continue
  for variant in installed source; do
    out=$(cd "$work/$variant" && git apply -v "${header_globs[@]}" "$patch" 2>&1) ||
      fail "$name: header hunks do not apply to the v2.14.1 headers ($variant form):
$out"
  done
  echo "   $name: $(tr '\n' ' ' <<<"$touched")"
done

# ---- include roots: the patched overlay first, then the v2.14.1 headers -------------------
inc=$work/installed
mkdir -p "$inc/aten/src/ATen/mps"
cp -r "$root/aten_mps" "$inc/aten/src/ATen/mps/threadsafe" # as build.sh does
# fmt (included by ATen/native/mps/OperationUtils.h) is not in libtorch-dev: take it from the
# system (libfmt-dev), or from the torch wheel in the project's .venv -- only fmt/, linked into
# a directory of its own, so no other header of that torch version can be picked up.
mkdir -p "$work/fmt-include"
for candidate in ${FMT_INCLUDE:-} /usr/include "$root"/.venv/lib/python3*/site-packages/torch/include; do
  if [ -f "$candidate/fmt/format.h" ]; then
    ln -s "$candidate/fmt" "$work/fmt-include/fmt"
    break
  fi
done
[ -e "$work/fmt-include/fmt" ] || echo "   (no fmt headers found: headers that include <fmt/format.h> will fail; apt-get install libfmt-dev)"
roots=("$inc/aten/src" "$inc" "$inc/torch/csrc/api/include" "$cache" "$cache/torch/csrc/api/include" "$work/fmt-include")
torch_includes=()
torch_system_includes=()
for dir in "${roots[@]}"; do
  torch_includes+=(-I"$dir")
  torch_system_includes+=(-isystem "$dir")
done
python_includes=()
if py=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null); then
  python_includes+=(-I"$py")
fi
for python in "$root/.venv/bin/python" python3; do
  if pb=$("$python" -c 'import pybind11; print(pybind11.get_include())' 2>/dev/null); then
    python_includes+=(-I"$pb")
    break
  fi
done
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
# each public header of the runtime stands alone (the Metal backend's C++ entry point too)
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
    torch/csrc/api/include/*) echo "${1#torch/csrc/api/include/}" ;;
    *) echo "$1" ;;
  esac
}
mapfile -t changed_headers < <(for patch in "${ordered[@]}"; do
  git apply --numstat "${header_globs[@]}" "$patch" | awk '{print $3}'
done | sed 's/.* => //' | sort -u)
for header in "${changed_headers[@]}"; do
  [ -f "$inc/$header" ] || continue # deleted or renamed away
  name=$(include_name "$header")
  printf '#include <%s>\n' "$name" >"$work/tu.cpp"
  extra=()
  [[ "$header" == torch/csrc/* ]] && extra=("${python_includes[@]}")
  # C++ mode wherever upstream's version of the header is plain C++ (new headers: unless
  # they declare themselves Objective-C++ only).
  cxx=yes
  if [ -f "$cache/$name" ]; then
    printf '#include <%s>\n' "$name" >"$work/orig.cpp"
    g++ -std=c++20 -fsyntax-only -I"$stubs" -include "$stubs/darwin_prelude.h" -I"$cache" \
      -I"$cache/torch/csrc/api/include" "${extra[@]}" "$work/orig.cpp" >/dev/null 2>&1 || cxx=no
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
  echo "   $header: $([ $cxx = yes ] && echo 'C++ and ')Objective-C++"
done

# ---- (d) files the series adds, and our Objective-C++ ------------------------------------
# Files a patch creates wholesale, as the patch creates them (hunks against upstream files we
# do not have cannot be rebuilt; they are listed as unverified at the end).
python3 - "$inc" "${ordered[@]}" >"$work/created" <<'EOF'
import re, sys, pathlib
root = pathlib.Path(sys.argv[1])
for patch in sys.argv[2:]:
    text = open(patch, encoding="utf-8").read()
    for block in re.split(r"(?m)^(?=diff --git )", text):
        m = re.match(r"diff --git a/(\S+) b/(\S+)\n", block)
        if not m or "\nnew file mode " not in block.split("\n@@ ", 1)[0]:
            continue
        if "\n@@ " not in block:
            continue  # an empty new file
        lines = block.split("\n@@ ", 1)[1].split("\n")[1:]
        body = []
        for line in lines:
            if line.startswith("+"):
                body.append(line[1:])
            elif line.startswith("\\"):
                continue
            else:
                break  # end of the block
        target = root / m.group(2)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(body) + "\n", encoding="utf-8")
        print(m.group(2))
EOF
mapfile -t created <"$work/created"
step "(d) Objective-C++ files we add: clang++ -x objective-c++ -Wall -Wextra -Werror"
our_mm=("$root"/aten_mps/metal/*.mm)
[ ${#our_mm[@]} -gt 0 ] || fail "aten_mps/metal/ has no .mm files"
created_mm=()
for path in "${created[@]}"; do
  [[ "$path" == *.mm || "$path" == *.m ]] && created_mm+=("$inc/$path")
done
for src in "${our_mm[@]}" "${created_mm[@]}"; do
  out=$("${objcxx[@]}" -Wall -Wextra -Werror "${torch_system_includes[@]}" "$src" 2>&1) ||
    fail "${src#"$inc"/} does not compile as Objective-C++:
$out"
  echo "   ${src#"$inc"/}" | sed "s#$root/##"
done
step "(d) C++ and Python files the series adds"
for path in "${created[@]}"; do
  case $path in
    *.cpp | *.cc)
      extra=()
      [[ "$path" == torch/csrc/* ]] && extra=("${python_includes[@]}")
      out=$(g++ -std=c++20 -fsyntax-only -I"$stubs" -include "$stubs/darwin_prelude.h" \
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

# ---- what stays unverified here ----------------------------------------------------------
step "unverified on Linux (checked by the macOS workflow: build, link, test_mps_threadsafe.py)"
for patch in "${ordered[@]}"; do
  git apply --numstat "$patch" | awk '{print $3}' | sed 's/.* => //' | while read -r path; do
    case $path in
      *.h | *.hpp | *.cuh | *.upstream) ;;
      *)
        if ! grep -qx "$path" "$work/created"; then
          echo "   $(basename "$patch"): $path"
        fi
        ;;
    esac
  done
done | sort -u
echo "check.sh: OK"
