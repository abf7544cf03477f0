#!/usr/bin/env python3
"""Audit (and fix) stream-queue discipline in PyTorch's aten/src/ATen/native/mps.

Rule (Note [On the queue] in aten_mps/stream.h): an MPS stream's command buffer, compute
encoder and commits may only be touched inside that stream's serial queue, entered with
dispatch_sync_with_rethrow (which the thread-safe runtime wraps). A raw dispatch_sync onto a
stream's queue is on the queue too -- the runtime's check accepts it, as PyTorch's documented
custom-kernel pattern needs -- but it bypasses Stream::dispatch: a C++ exception thrown inside
reaches libdispatch (which terminates the process), and the entry checks and the close-request
service on the way out are skipped. So ATen's own raw dispatch_sync calls are rewritten.

  mps_queue_audit.py --fix ROOT     rewrite raw `dispatch_sync(<stream>->queue(), ...)` (and
                                    `.queue()`) to dispatch_sync_with_rethrow; print each change
  mps_queue_audit.py --check ROOT   list every commandEncoder()/commandBuffer()/synchronize(...)
                                    call lexically outside a dispatch_sync_with_rethrow block;
                                    exit 1 if one is not in the allow list

ROOT is a PyTorch checkout. The check is lexical: a call in a helper that is only ever invoked
from inside a block (MetalKernelFunction::startEncoding, run from runCommandBlock) is listed in
ALLOWED with the reason.
"""

import argparse
import pathlib
import re
import sys

TREE = "aten/src/ATen/native/mps"
RAW_DISPATCH = re.compile(r"\bdispatch_sync\((\s*[\w\->.()\[\]]*?(?:->|\.)queue\(\))")
ENTER = re.compile(r"\bdispatch_sync_with_rethrow\s*\(")
TOUCH = re.compile(r"(?:->|\.)(commandEncoder|commandBuffer)\(\)|(?:->|\.)synchronize\(\s*SyncType::")

# (file suffix, enclosing function) -> why a lexically off-queue touch is on the queue at run time.
ALLOWED = {
    ("OperationUtils.mm", "MetalKernelFunction::startEncoding"): "called only inside runCommandBlock's block",
    ("OperationUtils.mm", "MetalKernelFunction::setErrorBufferIndex"): "called only inside runCommandBlock's block",
}


def blocks(text):
    """Character ranges of the blocks passed to dispatch_sync_with_rethrow."""
    ranges = []
    for m in ENTER.finditer(text):
        caret = text.find("^", m.end())
        brace = text.find("{", caret)
        if caret < 0 or brace < 0:
            continue
        depth, i = 0, brace
        while i < len(text):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        ranges.append((brace, i))
    return ranges


# A definition at column 0: `ret Class::name(params) [const] [override] {`.
FUNC = re.compile(
    r"^(?![ \t#])(?:[\w:<>,*&~]+[ \t*&]+)*([\w:~]+)\s*\([^;{}]*\)\s*(?:const\s*)?(?:override\s*)?\{", re.M
)


def enclosing_function(text, pos):
    name = "?"
    for m in FUNC.finditer(text, 0, pos):
        name = m.group(1)
    return name


def fix(root):
    changed = 0
    for path in sorted((root / TREE).rglob("*")):
        if path.suffix not in (".mm", ".h", ".cpp"):
            continue
        text = path.read_text()
        new, n = RAW_DISPATCH.subn(r"dispatch_sync_with_rethrow(\1", text)
        if n:
            path.write_text(new)
            changed += n
            print(f"{path.relative_to(root)}: {n} raw dispatch_sync -> dispatch_sync_with_rethrow")
    print(f"mps_queue_audit --fix: {changed} call(s) rewritten")


def check(root):
    unexpected = 0
    for path in sorted((root / TREE).rglob("*")):
        if path.suffix not in (".mm", ".h", ".cpp"):
            continue
        text = path.read_text()
        inside = blocks(text)
        findings = []
        for m in TOUCH.finditer(text):
            if any(a <= m.start() <= b for a, b in inside):
                continue
            func = enclosing_function(text, m.start())
            line = text.count("\n", 0, m.start()) + 1
            reason = ALLOWED.get((path.name, func))
            findings.append((line, func, m.group(0), reason))
        rel = path.relative_to(root)
        if not findings:
            if ENTER.search(text) or TOUCH.search(text):
                print(f"{rel}: ok")
            continue
        for line, func, what, reason in findings:
            verdict = f"allowed ({reason})" if reason else "OFF-QUEUE"
            unexpected += reason is None
            print(f"{rel}:{line}: {what} in {func}: {verdict}")
    if unexpected:
        print(f"mps_queue_audit --check: {unexpected} off-queue touch(es); fix them or add them to ALLOWED with a reason")
        return 1
    print("mps_queue_audit --check: every touch is on its stream's queue")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fix", action="store_true")
    mode.add_argument("--check", action="store_true")
    parser.add_argument("root", type=pathlib.Path)
    args = parser.parse_args()
    if not (args.root / TREE).is_dir():
        parser.error(f"{args.root / TREE} is not a directory: ROOT must be a PyTorch checkout")
    if args.fix:
        fix(args.root)
        return 0
    return check(args.root)


if __name__ == "__main__":
    sys.exit(main())
