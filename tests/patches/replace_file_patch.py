#!/usr/bin/env python3
"""Rewrites a git-format patch so that files it replaces wholesale carry only OUR content.

A diff that replaces a file lists every old line as a deletion, and `git apply` insists that
those lines match the tree exactly. For the upstream .mm files the series replaces
(MPSStream.mm, MPSEvent.mm, MPSGuardImpl.mm) no exact v2.14.1 copy is available here, and the
old text is not ours to ship. So each replaced file becomes two operations:

    rename  X -> X.upstream   (similarity 100%: git applies it without looking at content;
                               the upstream file stays in the tree for reference, and the
                               .upstream suffix keeps it out of ATen's mps/*.mm glob)
    create  X                 (our implementation, in full)

Usage: replace_file_patch.py PATCH PATH=NEWFILE [PATH=NEWFILE...]   (rewrites PATCH in place)
The diff block of each PATH in PATCH (if any) is dropped and replaced by the two operations,
with NEWFILE's content.
"""
import re
import subprocess
import sys


def new_content_block(path: str, content: str) -> str:
    """Rename `path` out of the way, then create it with `content`."""
    lines = content.splitlines(keepends=True)
    added = "".join("+" + line for line in lines)
    if lines and not lines[-1].endswith("\n"):
        added += "\n\\ No newline at end of file\n"
    return (f"diff --git a/{path} b/{path}.upstream\n"
            "similarity index 100%\n"
            f"rename from {path}\n"
            f"rename to {path}.upstream\n"
            f"diff --git a/{path} b/{path}\n"
            "new file mode 100644\n"
            "--- /dev/null\n"
            f"+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n" + added)


def main() -> int:
    patch_path = sys.argv[1]
    replacements = dict(arg.split("=", 1) for arg in sys.argv[2:])
    text = open(patch_path, encoding="utf-8").read()
    head, sep, rest = text.partition("\ndiff --git ")
    if not sep:
        sys.exit(f"{patch_path}: no diff")
    body, trailer_sep, trailer = ("diff --git " + rest).rpartition("\n-- \n")
    blocks = re.split(r"(?m)^(?=diff --git )", body)
    out = []
    for block in blocks:
        if not block:
            continue
        match = re.match(r"diff --git a/(\S+) b/(\S+)", block)
        if match and match.group(1) in replacements:
            continue
        out.append(block if block.endswith("\n") else block + "\n")
    for path, new_file in replacements.items():
        out.append(new_content_block(path, open(new_file, encoding="utf-8").read()))
    diff = "".join(out)
    stat = subprocess.run(["git", "apply", "--stat", "-"], input=diff, capture_output=True,
                          text=True, check=True).stdout
    # replace the diffstat that format-patch wrote (between '---' and the first diff)
    head_lines = head.split("\n---\n", 1)
    header = head_lines[0] + "\n---\n" + stat + "\n"
    open(patch_path, "w", encoding="utf-8").write(header + diff + "-- \n" + trailer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
