#!/usr/bin/env python3
"""binary_audit.py — every MPS stream/queue call site of PyTorch v2.14.1, from its machine code,
checked against the committed table patches/audit.tsv.

The release wheel's libtorch_cpu.dylib and libtorch_python.dylib hold the code of every v2.14.1
MPS function (the .mm sources themselves are not in the wheel). `llvm-objdump --macho -d`
(Debian's llvm reads Mach-O) lists, per function, each call; this tool keeps the calls to

    MPSStream::commandEncoder/commandBuffer/synchronize/endKernelCoalescing/commit*/flush/
    copy/copy_and_sync/fill/executeMPSGraph/addCompletedHandler/getErrorBuffer/checkLastError,
    getDefaultMPSStream, synchronizeAllMPSStreams, dispatch_sync_with_rethrow, and libdispatch's
    raw dispatch_sync / dispatch_async / dispatch_barrier_*,

and accounts for each (function, callee, count) site:

  * automatically, by rule (column `by` starts with `rule:`):
      entry       the call is dispatch_sync_with_rethrow itself: the way onto a queue (0002 sends
                  stream queues through the runtime);
      block       the caller is an Objective-C block (`..._block_invoke`) of a function that
                  enters queues only with dispatch_sync_with_rethrow (no raw dispatch_sync): the
                  block runs on the stream's queue; or of a function inlined into its callers
                  (no symbol of its own), whose dispatch is then a site of the caller: raw
                  dispatch_sync sites are hand rows and account for the blocks they run;
      in-block    every caller of the function is such a block (lambdas and helpers that encode
                  for the block that calls them);
  * by a row written by hand: `patched` (which patch), `replaced` (the file is replaced whole
    by a patch, with every exported symbol kept) or `safe` (why).

A site not in the table, or a table row whose site no longer exists, fails the check.

Usage: binary_audit.py [--upstream DIR] [--table FILE] [--write] [--list]
  DIR    tools/fetch_upstream.sh's output (default build/upstream-v2.14.1)
  --write  rewrite the table: rule rows regenerated, hand rows kept, new sites UNACCOUNTED
The disassembly (2 dylibs, ~1-3 min) is cached in DIR/audit-calls.tsv.
"""
import argparse
import collections
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
KEEP = re.compile(r"mps|MPS|Metal|dispatch_")
TARGET = re.compile(
    r"^__ZN2at3mps9MPSStream(14commandEncoder|13commandBuffer|11synchronize|19endKernelCoalescing"
    r"|6commit|13commitAndWait|17commitAndContinue|5flush|4copy|13copy_and_sync|4fill"
    r"|15executeMPSGraph|19addCompletedHandler|14getErrorBuffer|14checkLastError)"
    r"|^__ZN2at3mps19getDefaultMPSStreamEv$|^__ZN2at3mps24synchronizeAllMPSStreams"
    r"|^__ZN2at3mps26dispatch_sync_with_rethrow|^_dispatch_sync$|^_dispatch_async"
    r"|^_dispatch_barrier")
DSWR = "__ZN2at3mps26dispatch_sync_with_rethrowEPU28objcproto17OS_dispatch_queue8NSObjectU13block_pointerFvvE"
LIBS = ("libtorch_cpu.dylib", "libtorch_python.dylib")
STUB = re.compile(r"^0x[0-9a-f]+ ; symbol stub for: ")
HEADER = "function\tcallee\tcount\tverdict\tby\n"


def disassemble(upstream):
    cache = upstream / "audit-calls.tsv"
    if cache.is_file():
        return [tuple(l.split("\t")) for l in cache.read_text().splitlines() if l]
    calls = []
    for lib in LIBS:
        proc = subprocess.Popen(["llvm-objdump", "--macho", "-d", "--no-show-raw-insn",
                                 str(upstream / "installed" / "lib" / lib)],
                                stdout=subprocess.PIPE, text=True, errors="replace")
        function = None
        for line in proc.stdout:
            if line.endswith(":\n") and not line.startswith((" ", "\t")):
                function = line[:-2]
                continue
            if "\tbl\t" not in line and "\tb\t" not in line:
                continue
            target = line.rsplit("\t", 1)[1].strip()
            target = STUB.sub("", target)
            if function and KEEP.search(target):
                calls.append((lib, function, target))
        if proc.wait() != 0:
            sys.exit(f"binary_audit: llvm-objdump failed on {lib}")
    tmp = cache.with_suffix(".partial")
    tmp.write_text("".join("\t".join(c) + "\n" for c in calls))
    tmp.rename(cache)
    return calls


def defined_functions(upstream):
    names = set()
    for lib in LIBS:
        out = subprocess.run(["llvm-nm", "--defined-only", str(upstream / "installed" / "lib" / lib)],
                             check=True, capture_output=True, text=True).stdout
        names.update(line.split()[-1] for line in out.splitlines() if line.split()[1:2] in (["t"], ["T"]))
    return names


def block_parent(function):
    # `___ZN..._block_invoke`, `..._block_invoke_2`, `..._block_invoke.87` (objdump shows one
    # more leading underscore than nm); the parent is `__ZN...`
    m = re.match(r"^_+(Z.*?)_block_invoke(?:_\d+)?(?:\.\d+)?$", function)
    return "__" + m.group(1) if m else None


def sites_and_rules(calls, defined):
    by_function = collections.defaultdict(collections.Counter)
    callers = collections.defaultdict(set)
    for _, function, target in calls:
        by_function[function][target] += 1
        callers[target].add(function)
    on_queue = {}  # function -> why it runs on its stream's queue
    for function in by_function:
        parent = block_parent(function)
        if not parent:
            continue
        entries = by_function.get(parent, {})
        if entries.get(DSWR) and not entries.get("_dispatch_sync"):
            on_queue[function] = f"rule: block of {parent}, entered by dispatch_sync_with_rethrow"
        elif parent not in defined:
            # The parent was inlined into its callers, which dispatch the block; a caller that
            # uses a raw dispatch_sync is itself a site (hand row) and accounts for its blocks.
            on_queue[function] = "rule: block of an inlined function, entered by its caller"
    changed = True
    while changed:
        changed = False
        for function in list(by_function):
            if function in on_queue or not callers.get(function):
                continue
            if all(c in on_queue for c in callers[function]):
                on_queue[function] = "rule: in-block: every caller runs on the queue"
                changed = True
    sites = {}
    for function, targets in by_function.items():
        for target, count in targets.items():
            if not TARGET.search(target):
                continue
            if target == DSWR:
                rule = "rule: entry: dispatch_sync_with_rethrow (0002: through the runtime)"
            elif function in on_queue and target != "_dispatch_sync":
                rule = on_queue[function]
            else:
                rule = None
            sites[(function, target)] = (count, rule)
    return sites


def read_table(path):
    rows = {}
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 5:
            sys.exit(f"binary_audit: {path}:{number}: want 5 tab-separated columns, got {len(parts)}")
        rows[(parts[0], parts[1])] = (int(parts[2]), parts[3], parts[4])
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream", default=str(REPO / "build" / "upstream-v2.14.1"))
    parser.add_argument("--table", default=str(REPO / "patches" / "audit.tsv"))
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args()
    upstream, table = pathlib.Path(args.upstream), pathlib.Path(args.table)
    sites = sites_and_rules(disassemble(upstream), defined_functions(upstream))
    rows = read_table(table)
    if args.write:
        out = [HEADER]
        for (function, target), (count, rule) in sorted(sites.items()):
            if rule:
                out.append(f"{function}\t{target}\t{count}\ton-queue\t{rule}\n")
            else:
                _, verdict, by = rows.get((function, target), (0, "UNACCOUNTED", "-"))
                out.append(f"{function}\t{target}\t{count}\t{verdict}\t{by}\n")
        table.write_text("".join(out))
    rows = read_table(table)
    series = (REPO / "patches" / "series").read_text().split()
    problems = []
    for key, (count, rule) in sorted(sites.items()):
        row = rows.get(key)
        where = f"{key[0]} -> {key[1]} x{count}"
        if row is None:
            problems.append(f"unaccounted: {where}")
        elif row[0] != count:
            problems.append(f"count changed ({row[0]} in the table): {where}")
        elif rule and row[2] != rule:
            problems.append(f"rule row out of date (run --write): {where}")
        elif not rule and (row[1] not in ("patched", "replaced", "safe") or row[2] in ("", "-")):
            problems.append(f"{row[1]}: {where}")
        elif row[1] in ("patched", "replaced"):
            named = re.findall(r"\b(\d{4}-[\w.-]+?\.(?:patch|edits))\b", row[2])
            if not named or any(n not in series for n in named):
                problems.append(f"'{row[2]}' names no patch of patches/series: {where}")
    for key in sorted(set(rows) - set(sites)):
        problems.append(f"stale row (no such call in v2.14.1): {key[0]} -> {key[1]}")
    verdicts = collections.Counter(r[1] for r in rows.values())
    print(f"binary_audit: {len(sites)} call sites in {', '.join(LIBS)}: "
          + ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items())))
    if args.list:
        for key, row in sorted(rows.items()):
            if row[1] != "on-queue":
                print(f"  {row[1]:8} {key[0]} -> {key[1]} x{row[0]}: {row[2]}")
    for problem in problems:
        print(f"binary_audit: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
