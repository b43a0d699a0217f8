"""Parses the generated Swift with tree-sitter-swift: no Swift compiler is reachable here,
so this catches broken templates (unbalanced braces, garbled declarations), not type
errors. A negative control proves the check can fail: two deliberately broken copies
must be rejected.

The grammar rejects two valid constructs uniffi emits; they are blanked (same length, so
line numbers stay) before parsing:
  #if swift(>=5.8) @_documentation(visibility: private) #endif
  the empty closure { () }

usage: parse_check.py FILE.swift WORKDIR
"""

import re
import sys
from pathlib import Path

import tree_sitter_swift
from tree_sitter import Language, Parser

DOC_ATTRIBUTE = re.compile(r"#if swift\(>=5\.8\)\s*@_documentation\(visibility: private\)\s*#endif")
EMPTY_CLOSURE = re.compile(r"\{ \(\) \}")


def blank(match: re.Match) -> str:
    """The matched text as spaces, newlines kept."""
    return re.sub(r"[^\n]", " ", match.group(0))


def without_unparsable(source: str) -> tuple[str, int]:
    source, doc = DOC_ATTRIBUTE.subn(blank, source)
    source, closures = EMPTY_CLOSURE.subn(lambda m: "{    }", source)
    return source, doc + closures


def errors(parser: Parser, source: str) -> list[str]:
    """Where the parse failed: line:column of every ERROR or MISSING node."""
    tree = parser.parse(source.encode())
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            found.append(f"{row + 1}:{col + 1} {'missing ' + node.type if node.is_missing else 'syntax error'}")
        elif node.has_error:
            stack.extend(node.children)
    return sorted(found, key=lambda s: tuple(int(x) for x in s.split()[0].split(":")))


def broken_copies(source: str) -> dict[str, str]:
    """Two ways a template could break: a lost closing brace, a garbled keyword."""
    lines = source.split("\n")
    brace = next(i for i, line in enumerate(lines) if line == "}")
    lost_brace = "\n".join(lines[:brace] + lines[brace + 1:])
    garbled = source.replace("public func ", "public fnuc ", 1)
    assert garbled != source, "no public func to garble"
    return {"a closing brace removed": lost_brace, "'func' garbled": garbled}


def main() -> int:
    path, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    workdir.mkdir(parents=True, exist_ok=True)
    parser = Parser(Language(tree_sitter_swift.language()))
    source, blanked = without_unparsable(path.read_text())
    (workdir / "cairn.parsed.swift").write_text(source)

    failed = 0
    found = errors(parser, source)
    if found:
        failed += 1
        print(f"FAIL {path.name}: {len(found)} parse errors (line:column in {workdir / 'cairn.parsed.swift'}):")
        for e in found[:20]:
            print(f"  {e}")
    else:
        print(f"ok   {path.name} parses ({len(source.splitlines())} lines, {blanked} known constructs blanked)")

    for what, copy in broken_copies(source).items():
        (workdir / f"broken-{len(what)}.swift").write_text(copy)
        if errors(parser, copy):
            print(f"ok   negative control: a copy with {what} is rejected")
        else:
            failed += 1
            print(f"FAIL negative control: a copy with {what} parses: the check cannot fail")

    print(f"{3 - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
