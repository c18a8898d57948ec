"""How much of each script is the algorithm: non-blank lines per part.

    python benchmarks/count_lines.py               # per script: algorithm against harness
    python benchmarks/count_lines.py --sections    # and non-blank lines per section, to see where they go
    python benchmarks/count_lines.py --readability # packed statements and trailing comments per script

Counted from the section headers (`# ==== N. ...`): the algorithm is sections 3-8 (networks, C51 critic,
E-step, M-step, policy objective, replay, learner step), from the line of section 3's header to the banner
that ends the algorithm. The training loop sits below the banner, with the harness it calls; the last
column counts it as algorithm too: the `while` loop of `train` (of `main` in older versions) and, in
the online scripts, `run_round` and `learn` (actors, replay ratio, learner steps). Everything else is
harness (module docstring, imports, Args and flag checks, environments and data loading, evaluation,
logging, checkpoints, export). Blank lines are not counted; comments and docstrings are.

--readability counts what makes a line hard to read: "packed" statements (two statements on one line, a
compound header with its body, `a, b = f(x), g(y)` for unrelated values, `f(), g()` or a conditional
expression as a statement, `:=`) and comments at the end of a code line other than shape notes such as
`# [N, B, D]`, as a share of the lines that hold code.
"""

import argparse
import ast
import io
import os
import re
import tokenize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi", "dime_finetune", "dime_morl"]
BANNER = "# The algorithm ends here"
LOOP_FUNCTIONS = {"run_round", "learn"}
SHAPE_NOTE = re.compile(r"#\s*[\[(]")
BLOCKS = ("body", "orelse", "finalbody", "handlers")


def loop_lines(tree: ast.Module) -> set[int]:
    """Line numbers (1-based) of the training loop: main's `while` statements and the loop's functions."""
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in ("main", "train"):
            for stmt in node.body:
                if isinstance(stmt, ast.While):
                    lines |= set(range(stmt.lineno, stmt.end_lineno + 1))
        if isinstance(node, ast.FunctionDef) and node.name in LOOP_FUNCTIONS:
            lines |= set(range(node.lineno, node.end_lineno + 1))
    return lines


def count(path: str) -> tuple[int, int, int, int]:
    """(all lines, non-blank algorithm lines, non-blank harness lines, non-blank loop lines) of a script."""
    text = open(path).read()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# ==== 3."))
    end = next(i for i, line in enumerate(lines) if line.startswith(BANNER))
    algorithm = sum(1 for line in lines[start:end] if line.strip())
    harness = sum(1 for line in lines[:start] + lines[end:] if line.strip())
    loop = sum(1 for n in loop_lines(ast.parse(text)) if lines[n - 1].strip())
    return len(lines), algorithm, harness, loop


def sections(path: str) -> list[tuple[str, int]]:
    """(section title, non-blank lines) in file order; "preamble" is the docstring, imports and constants
    above section 1, "banner" the comment that ends the algorithm."""
    lines = open(path).read().splitlines()
    starts = [(0, "preamble")]
    for i, line in enumerate(lines):
        if line.startswith("# ==== "):
            starts.append((i, line.strip("# =").split(":")[0]))
        elif line.startswith(BANNER):
            starts.append((i, "banner"))
    ends = [i for i, _ in starts[1:]] + [len(lines)]
    return [(title, sum(1 for line in lines[i:end] if line.strip())) for (i, title), end in zip(starts, ends)]


def packed_lines(tree: ast.Module) -> set[int]:
    """Line numbers that hold more than one statement, or a statement written as two."""
    first_statement, packed = {}, set()
    for node in ast.walk(tree):
        for block in (getattr(node, name, None) for name in BLOCKS):
            statements = [s for s in block if isinstance(s, ast.stmt)] if isinstance(block, list) else []
            for statement in statements:
                if first_statement.setdefault(statement.lineno, statement) is not statement:
                    packed.add(statement.lineno)
            if isinstance(node, ast.stmt) and statements and statements[0].lineno == node.lineno:
                packed.add(node.lineno)
        unrelated_pair = isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
        unrelated_pair = unrelated_pair and isinstance(node.value, ast.Tuple)
        if unrelated_pair and not all(isinstance(e, ast.Name) for e in node.value.elts):
            packed.add(node.lineno)
        if isinstance(node, ast.Expr) and isinstance(node.value, (ast.Tuple, ast.IfExp)):
            packed.add(node.lineno)
        if isinstance(node, ast.NamedExpr):
            packed.add(node.lineno)
    return packed


def readability(path: str) -> tuple[int, int, int, int]:
    """(packed statements, trailing comments that are not shape notes, code lines, non-blank lines)."""
    text = open(path).read()
    code, trailing = set(), 0
    layout = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (*layout, tokenize.ENDMARKER, tokenize.STRING):
            code.add(token.start[0])
        if token.type == tokenize.COMMENT and token.start[0] in code and not SHAPE_NOTE.match(token.string):
            trailing += 1
    nonblank = sum(1 for line in text.splitlines() if line.strip())
    return len(packed_lines(ast.parse(text))), trailing, len(code), nonblank


def print_readability() -> None:
    """The readability table, one row per script, as docs/results.md shows it."""
    print("| script | packed statements | trailing comments that are not shape notes | non-blank lines |")
    print("|---|---|---|---|")
    for script in SCRIPTS:
        packed, trailing, code, nonblank = readability(os.path.join(ROOT, f"{script}.py"))
        share = 100 * trailing / max(code, 1)
        print(f"| {script}.py | {packed} | {trailing} of {code} code lines ({share:.1f} %) | {nonblank} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", action="store_true", help="also print non-blank lines per section")
    parser.add_argument("--readability", action="store_true", help="print the readability table instead")
    args = parser.parse_args()
    if args.readability:
        print_readability()
        return
    print(f"{'script':<15}{'lines':>6}{'algorithm':>11}{'harness':>9}{'algorithm %':>13}{'with loop %':>13}")
    for script in SCRIPTS:
        total, algorithm, harness, loop = count(os.path.join(ROOT, f"{script}.py"))
        share, with_loop = (100 * a / (algorithm + harness) for a in (algorithm, algorithm + loop))
        print(f"{script:<15}{total:>6}{algorithm:>11}{harness:>9}{share:>12.0f}%{with_loop:>12.0f}%")
    if args.sections:
        for script in SCRIPTS:
            parts = sections(os.path.join(ROOT, f"{script}.py"))
            print(f"\n{script}: " + ", ".join(f"{title} {n}" for title, n in parts))


if __name__ == "__main__":
    main()
