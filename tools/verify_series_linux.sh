#!/usr/bin/env bash
# verify_series_linux.sh — the Linux checks of how the series is applied and of what it must
# cover, against the exact v2.14.1 release files (tools/fetch_upstream.sh):
#  1. tools/apply_series.sh is atomic: applied to a copy of the exact files, a series whose
#     last entry fails (a broken context line; an anchor that is not there) leaves the tree
#     exactly as it was — same commit, no changed, added or left-over (.orig/.rej) file — and
#     prints the failing hunk; a series that applies makes one commit per entry;
#  2. tools/anchored_edit.py does what patches/README.md says on a fixture: each op, and a
#     refusal for an anchor found twice, a count that differs, a missing function;
#  3. the binary audit (tools/binary_audit.py): every MPS stream/queue call site in v2.14.1's
#     libtorch_cpu/libtorch_python is accounted for in patches/audit.tsv.
# (Applying the whole series to the exact files and compiling it: tests/patches/check.sh.)
# Env: UPSTREAM_DIR (default build/upstream-v2.14.1; fetched when missing).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
upstream=${UPSTREAM_DIR:-$repo/build/upstream-v2.14.1}
"$repo/tools/fetch_upstream.sh" "$upstream" >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/verify-series.XXXXXX")
trap 'rm -rf "$work"' EXIT
fail() {
  echo "verify_series_linux: FAIL: $*" >&2
  exit 1
}
git_() { git -c user.name=verify -c user.email=verify@localhost "$@"; }

echo "== 1. tools/apply_series.sh is atomic"
tree=$work/tree
for path in aten/src/ATen/mps/MPSStream.h aten/src/ATen/native/mps/OperationUtils.h \
  aten/src/ATen/native/native_functions.yaml torch/mps/__init__.py; do
  mkdir -p "$tree/$(dirname "$path")"
  cp "$upstream/$path" "$tree/$path"
done
git_ -C "$tree" init -q
git_ -C "$tree" add -A
git_ -C "$tree" commit -qm "v2.14.1 (release wheel files)"
echo "not part of the tree" >"$tree/untracked-before.txt" # must survive a rollback
state() { # everything a rollback must restore
  (cd "$tree" && git rev-parse HEAD && git status --porcelain --ignored && git log --oneline | wc -l &&
    find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha256sum)
}
state >"$work/before"
good=$work/good
mkdir -p "$good"
for p in 0001-mps-build-thread-safe-runtime-into-aten.patch 0013-mps-graph-and-kernel-caches-thread-safe.patch; do
  cp "$repo/patches/$p" "$good/"
  echo "$p" >>"$good/series"
done
# (a) the last entry's context does not match v2.14.1 (one context line altered)
broken=$work/broken-context
cp -R "$good" "$broken"
awk '/^diff --git a\/aten\/src\/ATen\/native\/native_functions.yaml/ {yaml = 1}
     yaml && !done && /^ +CUDA: record_stream_cuda$/ {sub(/record_stream_cuda/, "record_stream_cuda_NOT_IN_V2_14_1"); done = 1}
     {print}' "$repo/patches/0015-mps-record-stream.patch" >"$broken/0015-broken.patch"
grep -q NOT_IN_V2_14_1 "$broken/0015-broken.patch" || fail "could not break 0015 for the test"
echo 0015-broken.patch >>"$broken/series"
# (b) the last entry anchors on a function that is not there
missing=$work/broken-anchor
cp -R "$good" "$missing"
mkdir -p "$tree/aten/src/ATen/mps"
cat >"$missing/9999-missing-anchor.edits" <<'EOF'
From: verify <verify@localhost>
Subject: [PATCH] test: an anchor that is not in the file

Problem: none (test input).
Fix: none.
Test: apply_series.sh must refuse it and roll back.
---
@@@ file aten/src/ATen/mps/MPSStream.h
@@@ body-start void no_such_function() { || sym=__Zfake
  int x = 0;
EOF
echo 9999-missing-anchor.edits >>"$missing/series"
for bad in "$broken" "$missing"; do
  if "$repo/tools/apply_series.sh" "$bad" "$tree" >"$work/out" 2>&1; then
    cat "$work/out"
    fail "apply_series.sh accepted $(tail -n1 "$bad/series")"
  fi
  state >"$work/after"
  diff "$work/before" "$work/after" >/dev/null ||
    fail "the tree changed after a failed apply ($(tail -n1 "$bad/series")):
$(diff "$work/before" "$work/after" | head -20)"
  case $bad in
    "$broken") grep -q 'record_stream_cuda' "$work/out" || fail "the failing hunk was not printed:
$(cat "$work/out")" ;;
    "$missing") grep -q 'no_such_function' "$work/out" || fail "the failing anchor was not printed:
$(cat "$work/out")" ;;
  esac
  echo "   $(tail -n1 "$bad/series"): refused, tree unchanged ($(grep -c . "$bad/series") entries, the last failing)"
done
"$repo/tools/apply_series.sh" "$good" "$tree" >"$work/out" 2>&1 || fail "the good series failed: $(cat "$work/out")"
[ "$(git -C "$tree" rev-list --count HEAD)" = 3 ] || fail "apply_series.sh did not make one commit per entry"
[ -z "$(git -C "$tree" status --porcelain --untracked-files=no)" ] || fail "apply_series.sh left uncommitted changes"
echo "   good series: one commit per entry, nothing left over"

echo "== 2. tools/anchored_edit.py on a fixture"
fx=$work/fixture
mkdir -p "$fx"
cat >"$fx/f.mm" <<'EOF'
namespace at::mps {

void one() {
  auto stream = getDefaultMPSStream();
  dispatch_sync(stream->queue(), ^() {
    @autoreleasepool {
      work(stream);
    }
  });
}

std::pair<int, int> Lib::two(
    int a,
    int b) {
  return {a, b};
}

class Inner {
  id<MTLLibrary> getLibrary() override {
    return lib;
  }
};

} // namespace at::mps
EOF
edits_head='From: verify <verify@localhost>
Subject: [PATCH] fixture
Problem: a.
Fix: b.
Test: c.
---
@@@ file f.mm'
cat >"$fx/ok.edits" <<EOF
$edits_head
@@@ prepend
#include <added.h>
@@@ replace void one() { || getDefaultMPSStream() || getCurrentMPSStream() || count=1 || sym=s1
@@@ replace void one() { || dispatch_sync( || dispatch_sync_with_rethrow( || count=1 || sym=s1
@@@ after void one() { || @autoreleasepool { || count=1 || sym=s1
  fetched();
@@@ body-start std::pair<int, int> Lib::two( || sym=s2
  lock();
@@@ body-start id<MTLLibrary> getLibrary() override { || sym=s3
    lock();
@@@ wrap void one() { || sym=s1
  run([&] {
@BODY@
  });
EOF
python3 "$repo/tools/anchored_edit.py" apply "$fx/ok.edits" "$fx" >/dev/null || fail "the fixture edits were refused"
cat >"$fx/expected.mm" <<'EOF'
#include <added.h>
namespace at::mps {

void one() {
  run([&] {
  auto stream = getCurrentMPSStream();
  dispatch_sync_with_rethrow(stream->queue(), ^() {
    @autoreleasepool {
      fetched();
      work(stream);
    }
  });
  });
}

std::pair<int, int> Lib::two(
    int a,
    int b) {
  lock();
  return {a, b};
}

class Inner {
  id<MTLLibrary> getLibrary() override {
    lock();
    return lib;
  }
};

} // namespace at::mps
EOF
diff "$fx/expected.mm" "$fx/f.mm" || fail "anchored_edit.py produced something else (diff above)"
echo "   ops: prepend, replace (token, count), after (indent), body-start (multi-line signature, in a class), wrap"
cp "$fx/f.mm" "$fx/applied.mm"
refuse() { # name, op lines
  printf '%s\n%s\n' "$edits_head" "$2" >"$fx/$1.edits"
  if python3 "$repo/tools/anchored_edit.py" apply "$fx/$1.edits" "$fx" >"$fx/out" 2>&1; then
    fail "anchored_edit.py accepted $1"
  fi
  cmp -s "$fx/f.mm" "$fx/applied.mm" || fail "anchored_edit.py wrote to the file although it refused $1"
  grep -q REFUSED "$fx/out" || fail "no refusal message for $1"
  echo "   refused: $1"
}
refuse count-differs '@@@ replace void one() { || work( || other( || count=2 || sym=s1'
refuse missing-function '@@@ body-start void three() { || sym=s4
  x();'
printf 'void one() {\n}\n' >>"$fx/f.mm"
cp "$fx/f.mm" "$fx/applied.mm"
refuse function-twice '@@@ body-start void one() { || sym=s1
  x();'

echo "== 3. binary audit (patches/audit.tsv)"
python3 "$repo/tools/binary_audit.py" --upstream "$upstream"
echo "verify_series_linux: ok"
