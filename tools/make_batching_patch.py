#!/usr/bin/env python3
"""make_batching_patch.py — keep patches/0017's torch/mps/batching.py equal to
python/mps_threadsafe/batching.py.

    python3 tools/make_batching_patch.py           rewrite 0017's torch/mps/batching.py block
    python3 tools/make_batching_patch.py --check   exit 1 if the patch's copy differs
    ... --source FILE                              take batching.py from FILE instead (e.g. a
                                                   committed version: git show HEAD:...)

The patched torch.mps ships the same file the mps_threadsafe package uses (batching.py imports
only torch and the standard library). Patch 0017 creates torch/mps/batching.py as a new file;
this tool rebuilds that one block, byte for byte, from python/mps_threadsafe/batching.py and
keeps everything else in the patch as it is (the header and message, the torch/mps/__init__.py
hunk, the test file, the signature). Blocks stay in path order, as git format-patch writes
them; the block is added if the patch does not have it yet. A second run changes nothing.
tests/patches/check.sh fails while the two copies differ.
"""

import argparse
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PATCH = ROOT / "patches" / "0017-mps-batched-module.patch"
SOURCE = ROOT / "python" / "mps_threadsafe" / "batching.py"
TARGET = "torch/mps/batching.py"
COMMAND = "python3 tools/make_batching_patch.py"


def new_file_block(path, data):
    """A git diff block that creates `path` with the bytes `data` (mode 100644)."""
    lines = re.findall(rb"[^\n]*\n|[^\n]+\Z", data)  # git splits at \n only (not at \r)
    if not lines:
        raise SystemExit(f"make_batching_patch: {path} would be empty")
    count = f"1,{len(lines)}" if len(lines) != 1 else "1"
    out = [
        f"diff --git a/{path} b/{path}\n".encode(),
        b"new file mode 100644\n",
        b"--- /dev/null\n",
        f"+++ b/{path}\n".encode(),
        f"@@ -0,0 +{count} @@\n".encode(),
    ]
    for line in lines:
        out.append(b"+" + line)
    if not lines[-1].endswith(b"\n"):
        out.append(b"\n\\ No newline at end of file\n")
    return b"".join(out)


def split_patch(text):
    """(head, [(path, block)], signature) of a git format-patch file, all bytes."""
    starts = [m.start() for m in re.finditer(rb"(?m)^diff --git ", text)]
    if not starts:
        return text, [], b""
    head = text[: starts[0]]
    rest = text[starts[0]:]
    sig = re.search(rb"(?m)^-- \n(?=[^\n]*\n?\Z)", rest)  # "-- \n<git version>\n" at the end
    signature = b""
    if sig:
        signature = rest[sig.start():]
        rest = rest[: sig.start()]
    blocks = []
    offsets = [m.start() for m in re.finditer(rb"(?m)^diff --git ", rest)] + [len(rest)]
    for begin, end in zip(offsets, offsets[1:]):
        block = rest[begin:end]
        m = re.match(rb"diff --git a/(\S+) b/(\S+)\n", block)
        if not m:
            raise SystemExit(f"make_batching_patch: {PATCH.name}: unreadable diff line: "
                             f"{block.splitlines()[0]!r}")
        blocks.append((m.group(2).decode(), block))
    return head, blocks, signature


def rebuilt(text, data):
    head, blocks, signature = split_patch(text)
    if not blocks:
        raise SystemExit(f"make_batching_patch: {PATCH.name} has no diff blocks: the header, "
                         "the torch/mps/__init__.py hunk and the test file must be there")
    ours = new_file_block(TARGET, data)
    kept = [(path, block) for path, block in blocks if path != TARGET]
    kept.append((TARGET, ours))
    kept.sort(key=lambda item: item[0].encode())
    return head + b"".join(block for _, block in kept) + signature


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 (changing nothing) if the patch's copy is out of date")
    parser.add_argument("--source", type=pathlib.Path, default=SOURCE,
                        help=f"the batching.py to copy (default {SOURCE.relative_to(ROOT)})")
    args = parser.parse_args()
    source = args.source.resolve()
    shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
    if not PATCH.is_file():
        raise SystemExit(f"make_batching_patch: {PATCH} is missing")
    text = PATCH.read_bytes()
    want = rebuilt(text, source.read_bytes())
    rel = PATCH.relative_to(ROOT)
    if args.check:
        if want != text:
            print(f"make_batching_patch: {rel}: its {TARGET} differs from "
                  f"{shown}; run: {COMMAND}", file=sys.stderr)
            return 1
        print(f"make_batching_patch: {rel}: {TARGET} is {shown}")
        return 0
    if want == text:
        print(f"make_batching_patch: {rel} is up to date")
        return 0
    PATCH.write_bytes(want)
    print(f"make_batching_patch: {rel}: {TARGET} rewritten from {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
