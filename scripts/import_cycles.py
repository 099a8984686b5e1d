#!/usr/bin/env python3
"""Find import cycles between the files of a Rust library crate's src/ tree.

Usage: scripts/import_cycles.py [SRC_DIR]      (default: <repo>/src)
Prints every cycle and exits 1, or prints "import cycles: none" and exits 0.

Nodes: every .rs file under SRC_DIR except main.rs (a crate root of its own),
bin/** (separate crates that see the library as `opsloop::...`) and files named
tests.rs (test-only, `#[cfg(test)] mod tests;`). Module paths follow file paths:
lib.rs is `crate`, a/mod.rs is `crate::a`, a/b.rs is `crate::a::b`.

Edges: a file is scanned after blanking comments, string/char literals and any
item after `#[cfg(test)]` (inline test modules, test helpers), since tests do
not shape the library's graph. Every path starting with `crate`, `super`,
`self` or a child declared here by `mod x;` is an edge, in `use` trees (groups
and nested braces expanded) and in code alike (`store::lock_case(..)`,
`crate::pubsub::outbox::enqueue(..)`), to the file of the longest prefix of
the resolved path that names a module file. Other crates and inline non-test
`mod x { }` blocks are not modelled.

Parent/child rule: Rust ties a parent to its children by construction -- the
parent declares them (`mod x;`) and often re-exports from them (`pub use x::Y;`)
while children routinely `use super::...`; counting that would make every
module directory a cycle. So:
  * `mod x;` / `pub mod x;` declarations create no edge, and
  * a `pub use` (any `pub(..)`) from a file into its own descendants creates no
    edge: it is a facade, not a use.
Everything else counts. A parent that calls into a child (`store::lock_case(..)`
or a private `use error::ApiError;`) depends on it, so if the child also uses
items of the parent (`use super::TransitionRequest;`) that is a real cycle and
is reported.

Output: each strongly connected component of more than one file, its members,
and shortest example cycles covering them, each edge with a line causing it.
"""
import bisect
import itertools
import re
import sys
from collections import deque
from pathlib import Path

IDENT = r"[A-Za-z_]\w*"
# One lexer pass: identifiers are consumed whole so that `r"`/`b"` prefixes are
# only recognised at the start of a token, and `'a'` is a char while `'a` is a
# lifetime (left alone).
LEX = re.compile(r"""(?P<line>//[^\n]*) | (?P<block>/\*) | (?P<raw>[bc]?r(?P<h>\#*)")
    | (?P<str>[bc]?") | (?P<chr>'(?:\\(?:x..|u\{[0-9a-fA-F]*\}|.)|[^\\'\n])')
    | (?P<ident>[A-Za-z_]\w*)""", re.X)
CFG_TEST = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")
USE = re.compile(r"(?P<pub>\bpub\b(?:\s*\([^)]*\))?\s*)?\buse\s+(?P<tree>[^;]*);")
MOD_DECL = re.compile(r"\bmod\s+(" + IDENT + r")\s*;")
VISIBILITY = re.compile(r"\bpub\s*\([^)]*\)")  # `pub(in crate::a)` is not a use
TOK = re.compile(r"::|[{},*]|" + IDENT)


def blank(s):
    """Same length, newlines kept, so offsets and line numbers stay valid."""
    return re.sub(r"[^\n]", " ", s)


def strip_literals(src):
    out, pos = [], 0
    while m := LEX.search(src, pos):
        out.append(src[pos:m.start()])
        if m["ident"]:
            out.append(m["ident"])
            pos = m.end()
            continue
        end = m.end()
        if m["block"]:  # block comments nest in Rust
            depth = 1
            while end < len(src) and depth:
                two = src[end:end + 2]
                depth += {"/*": 1, "*/": -1}.get(two, 0)
                end += 2 if two in ("/*", "*/") else 1
        elif m["raw"]:
            close = src.find('"' + m["h"], end)
            end = len(src) if close < 0 else close + 1 + len(m["h"])
        elif m["str"]:
            while end < len(src) and src[end] != '"':
                end += 2 if src[end] == "\\" else 1
            end += 1
        out.append(blank(src[m.start():end]))
        pos = end
    return "".join(out) + src[pos:]


def drop_cfg_test(code):
    """Blank each `#[cfg(test)]` item: up to its `;` or through its `{ ... }`."""
    while m := CFG_TEST.search(code):
        j, depth = m.end(), 0
        while j < len(code) and not (depth == 0 and code[j] in ";{"):
            depth += (code[j] in "([") - (code[j] in ")]")  # more attributes, params
            j += 1
        if code[j:j + 1] == "{":
            while j < len(code):
                depth += (code[j] == "{") - (code[j] == "}")
                j += 1
                if depth == 0:
                    break
        else:
            j += 1
        code = code[:m.start()] + blank(code[m.start():j]) + code[j:]
    return code


def expand_use(tree, base):
    """Leaves of a use tree, each a list of (segment, offset) pairs."""
    toks = [(t.group(), base + t.start()) for t in TOK.finditer(tree)]
    leaves = []

    def walk(i, prefix):  # parse one subtree from toks[i]; return next index
        path = list(prefix)
        while i < len(toks):
            t, at = toks[i]
            if t == "{":
                i += 1
                while i < len(toks) and toks[i][0] != "}":
                    i = i + 1 if toks[i][0] == "," else walk(i, path)
                return i + 1
            if t in (",", "}"):
                break
            if t == "as":  # `X as Y`: the alias adds no dependency
                i += 2
                continue
            if t not in ("::", "*") and not (t == "self" and path):
                path.append((t, at))  # `a::{self}` and `a::*` both mean `a`
            i += 1
        leaves.append(path)
        return i

    i = 0
    while i < len(toks):
        i = i + 1 if toks[i][0] == "," else walk(i, [])
    return leaves


def module_of(rel):
    parts = list(rel.with_suffix("").parts)
    if parts == ["lib"] or parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def anchor(names, mod, children):
    """(base module, number of head segments it replaces), or None if external."""
    if names[0] == "crate":
        return (), 1
    if names[0] == "self":
        return mod, 1
    if names[0] == "super":
        n = len(names) - len(list(itertools.dropwhile(lambda x: x == "super", names)))
        return (mod[:len(mod) - n], n) if n <= len(mod) else None
    return (mod, 0) if names[0] in children else None


def build_graph(src_dir):
    files = {}  # module path -> file
    for f in sorted(src_dir.rglob("*.rs")):
        rel = f.relative_to(src_dir)
        if rel.parts[0] == "bin" or rel == Path("main.rs") or f.name == "tests.rs":
            continue
        files[module_of(rel)] = f
    edges = {}  # (from file, to file) -> (line, line text)

    def add(f, mod, children, segs, lines, starts, reexport=False):
        names = [name for name, _ in segs]
        if not names or not (found := anchor(names, mod, children)):
            return
        base, j = found
        path = base + tuple(names[j:])
        k = next(k for k in range(len(path), -1, -1) if path[:k] in files or k == 0)
        dst = files.get(path[:k])
        if dst is None or dst == f:
            return
        if reexport and path[:k][:len(mod)] == mod:  # parent re-exporting a descendant
            return
        # Blame the line of the segment that names the target module, which in
        # a multi-line grouped `use` is the line that mentions that module.
        at = segs[max(0, min(len(segs) - 1, j + k - len(base) - 1))][1]
        line = bisect.bisect_right(starts, at)
        if (f, dst) not in edges or line < edges[(f, dst)][0]:
            edges[(f, dst)] = (line, lines[line - 1].strip())

    for mod, f in files.items():
        text = f.read_text(encoding="utf-8")
        lines = text.split("\n")
        starts = [0] + [m.end() for m in re.finditer("\n", text)]
        code = drop_cfg_test(strip_literals(text))
        children = set(MOD_DECL.findall(code))
        for u in USE.finditer(code):
            for segs in expand_use(u["tree"], u.start("tree")):
                add(f, mod, children, segs, lines, starts, reexport=bool(u["pub"]))
        # Use statements are done; blank them so their prefixes are not re-read.
        code = USE.sub(lambda u: blank(u.group()), code)
        code = VISIBILITY.sub(lambda v: blank(v.group()), code)
        heads = "|".join(["crate", "super", "self", *sorted(children)])
        for p in re.finditer(r"(?<![\w:.$])(?:%s)(?:\s*::\s*%s)+" % (heads, IDENT), code):
            segs = [(t.group(), p.start() + t.start()) for t in re.finditer(IDENT, p.group())]
            add(f, mod, children, segs, lines, starts)
    return sorted(files.values()), edges


def reach(v, adj):
    seen, todo = set(), [v]
    while todo:
        for w in adj.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def shortest_cycle(start, members, adj):
    """BFS inside the component from `start` back to itself."""
    prev, queue = {}, deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(adj.get(v, ())):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w in members and w not in prev:
                prev[w] = v
                queue.append(w)


def main():
    root = Path(__file__).resolve().parent.parent
    src_dir = (Path(sys.argv[1]) if len(sys.argv) > 1 else root / "src").resolve()
    if not src_dir.is_dir():
        sys.exit(f"import_cycles: {src_dir} is not a directory")
    nodes, edges = build_graph(src_dir)
    adj = {}
    for a, b in edges:
        adj.setdefault(a, set()).add(b)
    # A few dozen files: strongly connected components by mutual reachability.
    fwd = {v: reach(v, adj) for v in nodes}
    comps = {tuple(sorted(w for w in fwd[v] if v in fwd[w])) for v in nodes if v in fwd[v]}
    if not comps:
        print("import cycles: none")
        return 0

    def show(f):  # as the repository names it: src/a/b.rs
        return str(f.relative_to(src_dir.parent))

    comps = sorted(comps)
    print(f"import cycles: {len(comps)} group(s) of files that import each other\n")
    for n, comp in enumerate(comps, 1):
        print(f"cycle group {n} ({len(comp)} files):")
        for f in comp:
            print(f"  {show(f)}")
        # One shortest cycle per file not yet shown, so every member gets a witness.
        todo = list(comp)
        while todo:
            path = shortest_cycle(todo[0], set(comp), adj)
            todo = [f for f in todo if f not in path]
            print("  example cycle:")
            for a, b in zip(path, path[1:]):
                line, txt = edges[(a, b)]
                txt = txt if len(txt) <= 100 else txt[:97] + "..."
                print(f"    {show(a)}:{line} -> {show(b)}  ({txt})")
        print()
    return 1


if __name__ == "__main__":
    sys.exit(main())
