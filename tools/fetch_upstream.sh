#!/usr/bin/env bash
# fetch_upstream.sh [DEST] — the exact PyTorch v2.14.1 files the patch checks work against,
# taken from the official release wheel (ground truth for v2.14.1: it is built from the release
# commit and ships the headers, the generated op headers, torch/mps/*.py, native_functions.yaml
# and the MPS code's machine code in libtorch_cpu.dylib).
#
#   1. pip downloads torch==2.14.1 for macOS 14 arm64 / CPython 3.11 into build/wheel-cache/
#      (once; the wheel's sha256 is pinned below, and torch/version.py must name the release
#      commit) — ~127 MB, never committed (build/ is gitignored);
#   2. lays out every file it carries that has an upstream source path, at that path, under
#      DEST (default build/upstream-v2.14.1):
#        aten/src/ATen/**.h, c10/**, torch/csrc/**, torch/headeronly/**, caffe2/** (headers;
#            the install-time `#if !defined(TORCH_STABLE_ONLY)...#error...#endif` wrapper is
#            removed, exactly: the source text is what setup.py wrapped)
#        build/aten/src/ATen/** (generated headers: ATen/ops/*.h and those made from
#            aten/src/ATen/templates/, where a PyTorch build writes them)
#        aten/src/ATen/native/native_functions.yaml, tags.yaml, aten/src/ATen/templates/*
#            (from torchgen/packaged/ATen/)
#        torch/**.py, torch/**.pyi (torch/_C/*.pyi are generated from *.pyi.in: used for the
#            Python surface only)
#      and, for compiling and the binary audit:
#        installed/include/ (the wheel's torch/include verbatim), installed/lib/*.dylib,
#        MANIFEST (every laid-out path and its source in the wheel).
#   Upstream .mm/.cpp sources are not in the wheel: no patch hunk may be written against them
#   (patches/README.md, "Exact text").
#
# Env: UPSTREAM_WHEEL_CACHE (default build/wheel-cache), PIP (default: python3 -m pip).
# Prints DEST on the last line of stdout.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$repo/build/upstream-v2.14.1}
cache=${UPSTREAM_WHEEL_CACHE:-$repo/build/wheel-cache}
version=2.14.1
commit=5c4886908584029761b579af026dcfb627c84070
wheel_name=torch-2.14.1-cp311-cp311-macosx_14_0_arm64.whl
wheel_sha256=b6074b130fd26bc50f5d171f07dfed70db22dd0c354ab34767729249f9e0f042
stamp="$version $commit $wheel_sha256 layout-3"

die() { echo "fetch_upstream: $*" >&2; exit 1; }
if [ -f "$dest/.stamp" ] && [ "$(cat "$dest/.stamp")" = "$stamp" ]; then
  echo "$dest"
  exit 0
fi

wheel=$cache/$wheel_name
if [ ! -f "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$wheel_sha256" ]; then
  mkdir -p "$cache"
  rm -rf "$cache/.partial"
  echo "fetch_upstream: pip download torch==$version (macosx_14_0_arm64, cp311, ~127 MB)" >&2
  # shellcheck disable=SC2086
  ${PIP:-python3 -m pip} download --no-deps --only-binary=:all: --platform macosx_14_0_arm64 \
    --python-version 3.11 --dest "$cache/.partial" "torch==$version" >&2 ||
    die "pip download torch==$version failed"
  [ -f "$cache/.partial/$wheel_name" ] || die "pip did not produce $wheel_name: $(ls "$cache/.partial")"
  mv "$cache/.partial/$wheel_name" "$wheel"
  rm -rf "$cache/.partial"
fi
got=$(sha256sum "$wheel" | cut -d' ' -f1)
[ "$got" = "$wheel_sha256" ] || die "$wheel: sha256 $got, expected $wheel_sha256 (the PyPI release file)"

work=$(mktemp -d "${TMPDIR:-/tmp}/fetch-upstream.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 - "$wheel" "$work/out" "$version" "$commit" <<'EOF'
import pathlib, re, stat, sys, zipfile

wheel, out, version, commit = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], sys.argv[4]
z = zipfile.ZipFile(wheel)
names = set(z.namelist())

version_py = z.read("torch/version.py").decode()
if f"__version__ = '{version}'" not in version_py or f"git_version = '{commit}'" not in version_py:
    sys.exit(f"fetch_upstream: torch/version.py does not name v{version} at {commit}:\n{version_py}")

HEAD = "#if !defined(TORCH_STABLE_ONLY) && !defined(TORCH_TARGET_VERSION)\n"
TAIL = ('\n#else\n#error "This file should not be included when either TORCH_STABLE_ONLY or '
        'TORCH_TARGET_VERSION is defined."\n#endif  // !defined(TORCH_STABLE_ONLY) && '
        '!defined(TORCH_TARGET_VERSION)\n')

templates = {pathlib.PurePosixPath(n).name for n in names
             if n.startswith("torchgen/packaged/ATen/templates/")}
manifest = []

def put(path, data, origin, mode=0o644):
    target = out / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    target.chmod(mode)
    manifest.append(f"{path}\t{origin}")

def source_path(header):  # path under torch/include -> repository path
    rel = header[len("torch/include/"):]
    if rel.startswith("ATen/"):
        generated = rel.startswith("ATen/ops/") or rel in ("ATen/core/TensorBody.h",) or \
            (rel.count("/") == 1 and pathlib.PurePosixPath(rel).name in templates) or \
            rel in ("ATen/core/aten_interned_strings.h", "ATen/core/enum_tag.h")
        return ("build/aten/src/" if generated else "aten/src/") + rel
    for root in ("c10/", "torch/csrc/", "torch/headeronly/", "caffe2/"):
        if rel.startswith(root):
            return rel
    return None  # third-party headers (fmt, pybind11, ...): not PyTorch sources

for name in sorted(names):
    if name.endswith("/"):
        continue
    info = z.getinfo(name)
    data = z.read(name)
    if name.startswith("torch/include/"):
        put("installed/include/" + name[len("torch/include/"):], data, name)
        src = source_path(name)
        if src is None:
            continue
        text = data.decode("utf-8", "surrogateescape")
        if text.startswith(HEAD) and text.endswith(TAIL):
            text = text[len(HEAD):-len(TAIL)]
        put(src, text.encode("utf-8", "surrogateescape"), name + " (install wrapper removed)")
    elif name.startswith("torch/lib/") and name.endswith(".dylib"):
        put("installed/lib/" + pathlib.PurePosixPath(name).name, data, name, 0o755)
    elif name.startswith("torchgen/packaged/ATen/"):
        put("aten/src/ATen/" + name[len("torchgen/packaged/ATen/"):], data, name)
    elif name.startswith("torch/") and (name.endswith(".py") or name.endswith(".pyi")):
        put(name, data, name)
(out / "MANIFEST").write_text("\n".join(manifest) + "\n")
print(f"fetch_upstream: {len(manifest)} files from {pathlib.Path(wheel).name} "
      f"(torch {version}, {commit[:12]})", file=sys.stderr)
EOF
echo "$stamp" >"$work/out/.stamp"
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$work/out" "$dest"
echo "$dest"
