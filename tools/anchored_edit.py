#!/usr/bin/env python3
"""anchored_edit.py — apply (or check) an anchored edit file (patches/*.edits) to a tree.

Why: for the upstream files whose exact v2.14.1 text is not in the release wheel (the .mm/.cpp
sources), a context diff would be a guess at text nobody here has seen. An anchored edit names
the function it changes by its signature line — a function the v2.14.1 symbol table confirms
(`sym=` gives its mangled name; tests/patches/check.sh looks each one up in the wheel's
libtorch_cpu/libtorch_python) — and changes only what it owns: a whole body it rewrites, lines
inserted at the start of a body, or lines inside a body whose calls the v2.14.1 disassembly
shows (patches/audit.tsv). Every anchor must be found exactly as often as stated (default once)
or the file is refused, with the op printed; nothing is written unless every op of the file
applies. See patches/README.md, "Exact text".

File format (after a git-style header: From:/Subject:/description, then a line `---`):

    @@@ file PATH                                  the file the following ops edit
    @@@ prepend                                     lines inserted before line 1
    @@@ body FUNC || sym=MANGLED                   replace FUNC's body
    @@@ body-start FUNC || sym=MANGLED             insert at the start of FUNC's body
    @@@ line FUNC || OLD || count=N || sym=MANGLED replace each body line OLD (N of them)
    @@@ after FUNC || OLD || count=N || sym=MANGLED insert after each body line OLD
    @@@ replace FUNC || OLD || NEW || count=N || sym=M  replace the token OLD by NEW in FUNC's
                                                   body (N occurrences: the calls the v2.14.1
                                                   disassembly shows; OLD must not follow an
                                                   identifier character)
    @@@ wrap FUNC || sym=MANGLED                   FUNC's body becomes the op's lines, with the
                                                   line `@BODY@` replaced by the old body
    @@@ after-line OLD                             insert after the file's one line OLD
    @@@ append                                     lines added at the end of the file

FUNC is the stripped text of the first line of the function's signature (it must occur once in
the file; the body opens at the first line ending in `{`, at most 5 lines further); the body
ends at the first later line that is the signature's indentation followed by `}`. OLD is compared
with each line stripped of surrounding whitespace; the lines given for `line`/`after`/
`after-line` are indented by OLD's indentation. Lines of an op run to the next `@@@` line.

Usage: anchored_edit.py apply EDITS TREE | check EDITS | symbols EDITS | files EDITS
"""
import pathlib
import re
import sys


class Refused(Exception):
    pass


def parse(path):
    text = pathlib.Path(path).read_text(encoding="utf-8")
    head, sep, body = text.partition("\n---\n")
    if not sep:
        raise Refused(f"{path}: no '---' line after the description")
    if not re.search(r"(?m)^Subject: ", head):
        raise Refused(f"{path}: no Subject")
    files = []  # [(path, [op])]
    op = None
    for number, line in enumerate(body.split("\n"), start=head.count("\n") + 3):
        if line.startswith("@@@ "):
            words = line[4:].split(" ", 1)
            kind, rest = words[0], (words[1] if len(words) > 1 else "")
            if kind == "file":
                files.append((rest.strip(), []))
                op = None
                continue
            if kind == "end":
                op = None
                continue
            if not files:
                raise Refused(f"{path}:{number}: '{kind}' before any '@@@ file'")
            fields = [f.strip() for f in rest.split(" || ")] if rest else []
            positional = [f for f in fields if not re.match(r"^(sym|count)=", f)]
            keywords = dict(f.split("=", 1) for f in fields if re.match(r"^(sym|count)=", f))
            want = {"prepend": 0, "append": 0, "body": 1, "body-start": 1, "line": 2,
                    "after": 2, "after-line": 1, "replace": 3, "wrap": 1}
            if kind not in want:
                raise Refused(f"{path}:{number}: unknown op '{kind}'")
            if len(positional) != want[kind]:
                raise Refused(f"{path}:{number}: '{kind}' takes {want[kind]} anchors, got {positional}")
            if kind in ("body", "body-start", "line", "after", "replace", "wrap") and "sym" not in keywords:
                raise Refused(f"{path}:{number}: '{kind}' names a function: give its sym=")
            op = {"kind": kind, "anchors": positional, "count": int(keywords.get("count", 1)),
                  "sym": keywords.get("sym"), "lines": [], "where": f"{path}:{number}",
                  "header": line}
            files[-1][1].append(op)
        elif op is not None:
            op["lines"].append(line)
        elif line.strip() and not line.startswith("#"):
            raise Refused(f"{path}:{number}: text outside an op: {line!r}")
    for _, ops in files:
        for o in ops:  # the blank lines before the next op are layout, not content
            while o["lines"] and o["lines"][-1] == "":
                o["lines"].pop()
    return files


def indent(lines, prefix):
    return [prefix + l if l else l for l in lines]


def find_function(lines, anchor, op):
    """(line index of the body's opening '{', index of its closing '}')."""
    def opening_of(start):
        # a signature may continue over a few lines (parameters one per line)
        for i in range(start, min(start + 6, len(lines))):
            text = lines[i].rstrip()
            if text.endswith("{"):
                return i
            if text.endswith((";", "}")):
                return None
        return None

    # An anchor ending in '(' names the function by its name up to the parameters (a prefix
    # of the signature's first line), so the parameters' line breaks do not matter.
    prefix = anchor.endswith("(")
    hits = [i for i, l in enumerate(lines)
            if (l.strip().startswith(anchor) if prefix else l.strip() == anchor)
            and opening_of(i) is not None]
    if len(hits) != 1:
        raise Refused(f"{op['where']}: function {anchor!r} (with a body) found {len(hits)} times, want 1")
    start = hits[0]
    opening = opening_of(start)
    # the body closes at the first later line that is the signature's indentation + '}'
    closing = re.match(r"\s*", lines[start]).group(0) + "}"
    for end in range(opening + 1, len(lines)):
        if lines[end] == closing:
            return opening, end
    raise Refused(f"{op['where']}: no closing {closing!r} line after {anchor!r}")


def apply_ops(text, ops):
    lines = text.split("\n")
    for op in ops:
        kind, anchors = op["kind"], op["anchors"]
        if kind == "prepend":
            lines[0:0] = op["lines"]
        elif kind == "append":
            while lines and lines[-1] == "":
                lines.pop()
            lines += op["lines"] + [""]
        elif kind == "after-line":
            hits = [i for i, l in enumerate(lines) if l.strip() == anchors[0]]
            if len(hits) != 1:
                raise Refused(f"{op['where']}: line {anchors[0]!r} found {len(hits)} times, want 1")
            prefix = re.match(r"\s*", lines[hits[0]]).group(0)
            lines[hits[0] + 1:hits[0] + 1] = indent(op["lines"], prefix)
        else:
            start, end = find_function(lines, anchors[0], op)
            if kind == "body":
                lines[start + 1:end] = op["lines"]
            elif kind == "wrap":
                if op["lines"].count("@BODY@") != 1:
                    raise Refused(f"{op['where']}: 'wrap' needs exactly one @BODY@ line")
                at = op["lines"].index("@BODY@")
                lines[start + 1:end] = op["lines"][:at] + lines[start + 1:end] + op["lines"][at + 1:]
            elif kind == "replace":
                token = re.compile(r"(?<![A-Za-z0-9_])" + re.escape(anchors[1]))
                found = sum(len(token.findall(lines[i])) for i in range(start + 1, end))
                if found != op["count"]:
                    raise Refused(f"{op['where']}: in {anchors[0]!r}, {anchors[1]!r} found {found} "
                                  f"times, want {op['count']}")
                for i in range(start + 1, end):
                    lines[i] = token.sub(lambda _: anchors[2], lines[i])
            elif kind == "body-start":
                lines[start + 1:start + 1] = op["lines"]
            else:
                hits = [i for i in range(start + 1, end) if lines[i].strip() == anchors[1]]
                if len(hits) != op["count"]:
                    raise Refused(f"{op['where']}: in {anchors[0]!r}, line {anchors[1]!r} found "
                                  f"{len(hits)} times, want {op['count']}")
                for i in reversed(hits):
                    prefix = re.match(r"\s*", lines[i]).group(0)
                    new = indent(op["lines"], prefix)
                    if kind == "line":
                        lines[i:i + 1] = new
                    else:
                        lines[i + 1:i + 1] = new
    return "\n".join(lines)


def main(argv):
    if len(argv) < 3 or argv[1] not in ("apply", "check", "symbols", "files"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        files = parse(argv[2])
        if argv[1] == "symbols":
            for _, ops in files:
                for op in ops:
                    if op["sym"]:
                        print(op["sym"])
            return 0
        if argv[1] == "files":
            for path, _ in files:
                print(path)
            return 0
        if argv[1] == "check":
            return 0
        tree = pathlib.Path(argv[3])
        results = {}
        for path, ops in files:
            target = tree / path
            if not target.is_file():
                raise Refused(f"{argv[2]}: {path} does not exist in {tree}")
            before = results.get(path, target.read_text(encoding="utf-8", errors="surrogateescape"))
            results[path] = apply_ops(before, ops)
        for path, text in results.items():
            (tree / path).write_text(text, encoding="utf-8", errors="surrogateescape")
            print(f"anchored_edit: {path}")
        return 0
    except Refused as refused:
        print(f"anchored_edit: REFUSED: {refused}", file=sys.stderr)
        for _, ops in (files if "files" in dir() else []):
            for op in ops:
                if op["where"] in str(refused):
                    print("  the op:\n    " + op["header"] + "\n" +
                          "\n".join("    " + l for l in op["lines"]), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
