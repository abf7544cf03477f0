#!/usr/bin/env bash
# apply_series.sh PATCH_DIR TREE — apply PATCH_DIR/series to the git checkout TREE, one commit
# per patch, failing loudly with the rejected hunks.
#
# Why not `git am -3`: a 3-way merge needs the preimage blobs named on each patch's `index`
# line, and for the Objective-C++ files no exact v2.14.1 text was obtainable when the hunks
# were written (patches/README.md says which commit each was read from). So each patch is
# tried exactly first, then with offsets and zero-context anchors (`git apply --unidiff-zero`),
# then with GNU patch's fuzz (2 lines) — and any hunk that still does not apply stops the build
# with the hunk printed.
set -euo pipefail
patches=$(cd "${1:?usage: apply_series.sh PATCH_DIR TREE}" && pwd)
tree=${2:?usage: apply_series.sh PATCH_DIR TREE}
cd "$tree"
git diff --quiet HEAD || { echo "apply_series: $tree has uncommitted changes" >&2; exit 1; }

subject() { sed -n 's/^Subject: \(\[PATCH[^]]*\] \)\{0,1\}//p' "$1" | head -n1; }
author() { sed -n 's/^From: //p' "$1" | head -n1; }

while read -r name; do
  case "$name" in ''|'#'*) continue ;; esac
  p="$patches/$name"
  [ -f "$p" ] || { echo "apply_series: $name is listed in series but missing" >&2; exit 1; }
  how=""
  if git apply --index --whitespace=nowarn "$p" 2>/dev/null; then
    how="exact"
  elif git apply --index --whitespace=nowarn --unidiff-zero "$p" 2>/dev/null; then
    how="offsets/zero-context"
  else
    find . -path ./.git -prune -o \( -name '*.rej' -o -name '*.orig' \) -type f -print0 | xargs -0 rm -f
    # Short options: GNU patch and macOS's BSD patch both take them (-N forward, -F fuzz,
    # -t batch, -s silent).
    if patch -p1 -N -F2 -t -s < "$p"; then
      find . -path ./.git -prune -o -name '*.orig' -type f -print0 | xargs -0 rm -f
      git add -A
      how="fuzz"
    else
      echo "apply_series: $name does not apply to $(git describe --tags --always 2>/dev/null || echo "$tree")." >&2
      echo "Rejected hunks:" >&2
      find . -name '*.rej' -not -path './.git/*' -print -exec cat {} \; >&2
      exit 1
    fi
  fi
  git -c user.name="${GIT_AUTHOR_NAME:-mps-threadsafe build}" -c user.email="${GIT_AUTHOR_EMAIL:-build@localhost}" \
    commit -q --author="$(author "$p")" -m "$(subject "$p")" -m "Applied from patches/$name ($how)."
  echo "apply_series: $name ($how)"
done < "$patches/series"
