"""Keep the docs' links into the scripts pointing at the code they name.

    python benchmarks/doc_links.py          # check: list every stale link, exit 1 if any
    python benchmarks/doc_links.py --write  # rewrite the line ranges in place

A link names one function or class of a top-level script, [`name`](../script.py#Lfirst-Llast) in docs/ and
[`name`](script.py#Lfirst-Llast) in README.md, and its range is that definition's lines (decorators
included), read from the script's syntax tree; tests/test_docs.py runs the check.
"""

import argparse
import ast
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(
    r"\[`(?P<name>[A-Za-z_][\w.]*)`\]\((?P<up>(?:\.\./)?)(?P<script>\w+\.py)#L(?P<first>\d+)-L(?P<last>\d+)\)"
)


def definitions(script: str) -> dict[str, tuple[int, int]]:
    """Top-level function and class names of a script -> (first line, last line)."""
    tree = ast.parse(open(os.path.join(ROOT, script)).read())
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            out[node.name] = (first, node.end_lineno)
    return out


def refresh(text: str, cache: dict) -> tuple[str, list[str]]:
    """The text with every link's range recomputed, and a line per link that was stale or names nothing."""
    problems = []

    def fix(match: re.Match) -> str:
        name, script = match["name"], match["script"]
        if script not in cache:
            cache[script] = definitions(script) if os.path.exists(os.path.join(ROOT, script)) else {}
        if name not in cache[script]:
            problems.append(f"{script} has no top-level {name}")
            return match[0]
        first, last = cache[script][name]
        if (int(match["first"]), int(match["last"])) != (first, last):
            problems.append(f"{name}: {script}#L{match['first']}-L{match['last']} is now #L{first}-L{last}")
        return f"[`{name}`]({match['up']}{script}#L{first}-L{last})"

    return LINK.sub(fix, text), problems


def documents() -> list[str]:
    """The files whose links are kept: README.md and docs/*.md."""
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite stale ranges in place")
    opts, cache, stale = parser.parse_args(), {}, 0
    for path in documents():
        text = open(path).read()
        new, problems = refresh(text, cache)
        for problem in problems:
            print(f"{os.path.relpath(path, ROOT)}: {problem}")
        stale += len(problems)
        if opts.write and new != text:
            open(path, "w").write(new)
    sys.exit(1 if stale and not opts.write else 0)


if __name__ == "__main__":
    main()
