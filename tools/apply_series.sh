#!/usr/bin/env bash
# apply_series.sh PATCH_DIR TREE — apply PATCH_DIR/series to the git checkout TREE (PyTorch
# v2.14.1), one commit per entry, all or nothing.
#
#   NAME.patch  git apply --index: exact context, no fuzz, no zero-context hunks (written
#               against exact v2.14.1 text: the headers, native_functions.yaml, torch/mps/*.py
#               of the release wheel; or whole new/renamed files);
#   NAME.edits  tools/anchored_edit.py: edits anchored on v2.14.1 functions, each anchor found
#               exactly as often as stated or the file is refused (patches/README.md, "Exact
#               text").
#
# Atomic: on any failure the tree is reset to the commit it started at and files the series
# created are removed, so TREE is exactly as before (no partial commits, no .orig/.rej); the
# failing hunk or anchor is printed. TREE must have no uncommitted changes to tracked files.
set -euo pipefail
usage="usage: apply_series.sh PATCH_DIR TREE"
patches=$(cd "${1:?$usage}" && pwd)
tree=${2:?$usage}
tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$tree"
git diff --quiet HEAD || { echo "apply_series: $tree has uncommitted changes" >&2; exit 1; }
start=$(git rev-parse HEAD)
untracked_before=$(mktemp)
git ls-files --others | LC_ALL=C sort >"$untracked_before"

rollback() {
  git reset -q --hard "$start"
  # files the failed step left untracked (new files of a patch, anything a tool wrote)
  # (portable to macOS: no -z/-r options of GNU comm/xargs)
  git ls-files --others | LC_ALL=C sort | comm -13 "$untracked_before" - |
    while IFS= read -r file; do rm -f -- "$file"; done
  rm -f "$untracked_before"
  echo "apply_series: $1; the tree is back at ${start:0:12} as it was." >&2
  exit 1
}

subject() { sed -n 's/^Subject: \(\[PATCH[^]]*\] \)\{0,1\}//p' "$1" | head -n1; }
author() { sed -n 's/^From: \(.*<.*>\)$/\1/p' "$1" | head -n1; }

while read -r name _; do
  case "$name" in '' | '#'*) continue ;; esac
  p="$patches/$name"
  [ -f "$p" ] || rollback "$name is listed in series but missing"
  case "$name" in
    *.patch)
      if ! out=$(git apply --index --whitespace=nowarn -v "$p" 2>&1); then
        printf '%s\n' "$out" | grep -v '^Checking patch\|^Applied patch\|cleanly\.$' >&2 || true
        rollback "$name does not apply exactly to $(git describe --tags --always 2>/dev/null || echo "$tree")"
      fi
      ;;
    *.edits)
      if ! python3 "$tools/anchored_edit.py" apply "$p" . >/dev/null; then
        rollback "$name: an anchor was not found as stated (above)"
      fi
      python3 "$tools/anchored_edit.py" files "$p" | while IFS= read -r file; do git add -- "$file"; done
      ;;
    *) rollback "$name: only .patch and .edits entries are supported" ;;
  esac
  git -c user.name="${GIT_AUTHOR_NAME:-mps-threadsafe build}" -c user.email="${GIT_AUTHOR_EMAIL:-build@localhost}" \
    commit -q --author="$(author "$p")" -m "$(subject "$p")" -m "Applied from patches/$name." ||
    rollback "$name: git commit failed (does it change anything?)"
  echo "apply_series: $name"
done <"$patches/series"
rm -f "$untracked_before"
