"""The docs and the scripts' own help agree with the code: the docs' links point at the functions and classes
they name (benchmarks/doc_links.py), dime_multi's results.json keys are documented, and every flag's --help
text is its field's own description."""

import ast
import importlib
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize

import numpy as np
import pytest
import tyro

from common import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import doc_links  # noqa: E402

SCRIPTS = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi", "dime_finetune", "dime_morl"]
# A comment that names a group of fields: one to five words, capitalised, no punctuation.
SECTION_REMARK = re.compile(r"[A-Z][a-z]*( [a-z]+){0,4}")


def test_every_code_link_names_its_definition_and_lines():
    """README.md's and docs/*.md's links into the scripts (README's "How to read a script" included)."""
    cache, problems, links = {}, [], 0
    for path in doc_links.documents():
        text = open(path).read()
        links += len(doc_links.LINK.findall(text))
        problems += [f"{os.path.basename(path)}: {p}" for p in doc_links.refresh(text, cache)[1]]
    assert links >= 20, "the implementation details link their code"
    assert not problems, "stale links (python benchmarks/doc_links.py --write): " + "; ".join(problems)


def test_a_moved_definition_is_reported_and_fixed():
    text = "see [`fail`](../dime_bc.py#L1-L2)"
    fixed, problems = doc_links.refresh(text, {})
    first, last = doc_links.definitions("dime_bc.py")["fail"]
    assert problems and fixed == f"see [`fail`](../dime_bc.py#L{first}-L{last})"
    assert doc_links.refresh(fixed, {})[1] == []
    assert doc_links.refresh("[`no_such_thing`](../dime_bc.py#L1-L2)", {})[1]


def test_line_counts_add_up_section_by_section():
    """count_lines' parts cover every non-blank line once: the sections sum to algorithm + harness."""
    import count_lines

    for script in count_lines.SCRIPTS:
        path = os.path.join(ROOT, f"{script}.py")
        total, algorithm, harness, _ = count_lines.count(path)
        parts = dict(count_lines.sections(path))
        assert sum(parts.values()) == algorithm + harness
        inside = [n for title, n in parts.items() if title[0] in "345678"]  # 3. ... 8., 7a. included
        assert sum(inside) == algorithm, script


def test_the_readability_count_finds_each_kind_of_packed_statement_and_trailing_comment(tmp_path):
    """Five packed lines, two trailing comments that are not shape notes, one that is."""
    import count_lines

    source = """
a = 1; b = 2
if a: b = 3
c, d = len([]), abs(-1)
print(a), print(b)
if (e := a) > 0:
    pass
f, g = a, b  # a pair of names: not packed, and a trailing comment
h = [a, b]  # [2]
i = h  # a second trailing comment
"""
    path = tmp_path / "snippet.py"
    path.write_text(source)
    packed, trailing, code, nonblank = count_lines.readability(str(path))
    assert (packed, trailing, code, nonblank) == (5, 2, 9, 9)


# ----------------------------------------------------------------------------------------- results.json
def tiny_dataset(path: str) -> str:
    """Three 20-step episodes of random cartpole_swingup-shaped transitions, written as project HDF5."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(60, 5))
    ends = np.arange(60) % 20 == 19
    actions = rng.uniform(-1, 1, (60, 1))
    ds = datasets.make_dataset(obs, actions, rng.uniform(0, 1, 60), np.roll(obs, -1, 0), np.zeros(60), ends)
    datasets.save_hdf5(ds, path)
    return path


def test_dime_multi_results_json_keys_are_documented(tmp_path):
    """docs/dime_multi.md refers to docs/dime_bc.md for every results.json key: each key of a dime_multi run
    (top level, dataset, an evaluation, a final and the best entry) is named in one of the two pages."""
    import dime_multi

    args = dime_multi.Args(
        env_id="cartpole_swingup",
        dataset=tiny_dataset(str(tmp_path / "tiny.hdf5")),
        output_dir=str(tmp_path / "runs"),
        hidden_sizes=(16, 16),
        batch_size=8,
        num_samples=3,
        total_steps=2,
        eval_every=2,
        eval_episodes=1,
        log_every=1,
        eval_alphas=(0.2, 1.0),
    )
    results = dime_multi.main(args)
    pages = [open(os.path.join(ROOT, "docs", page)).read() for page in ("dime_multi.md", "dime_bc.md")]
    documented = "\n".join(pages)
    entries = [results, results["dataset"], results["evaluations"][-1], results["final"][0], results["best"]]
    for key in {key for entry in entries for key in entry}:
        assert f"`{key}`" in documented, (
            f"results.json key {key} is in neither docs/dime_multi.md nor dime_bc.md"
        )


# -------------------------------------------------------------------------------------------- --help
def rendered_help(module, capsys) -> dict[str, str]:
    """Each flag's help text as tyro's --help shows it, the lines of a wrapped text joined."""
    with pytest.raises(SystemExit):
        tyro.cli(module.Args, args=["--help"])
    helps = {}
    flag = None
    for line in capsys.readouterr().out.splitlines():
        # Plain text, or inside rich's boxes on a terminal.
        content = line.strip("│").rstrip()
        if not content.strip() or re.fullmatch(r"\s*-+", content):
            flag = None
        elif re.match(r"\s{0,3}-", content):
            # "--flag METAVAR  help": the flag and its help are two or more spaces apart.
            head, *text = re.split(r"\s{2,}", content.strip(), maxsplit=1)
            flag = re.match(r"-[-\w]+", head).group()
            helps[flag] = text
        elif flag and re.match(r"\s{4,}", content):
            helps[flag].append(content.strip())
    return {flag: " ".join(text) for flag, text in helps.items()}


def own_descriptions(module) -> dict[str, str]:
    """Each Args field's own description, whitespace collapsed: the docstring below it, else the comment at
    the end of its line, else the comment lines right above it that are not section remarks ('' if none)."""
    source = textwrap.dedent(inspect.getsource(module.Args))
    lines = source.splitlines()
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string[1:].strip()
    (cls,) = ast.parse(source).body
    descriptions = {}
    for node, after in zip(cls.body, [*cls.body[1:], None]):
        if not isinstance(node, ast.AnnAssign):
            continue
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            text = after.value.value
        elif node.lineno in comments:
            text = comments[node.lineno]
        else:
            row = node.lineno - 1
            while row >= 1 and lines[row - 1].lstrip().startswith("#"):
                row -= 1
            above = [comments[r] for r in range(row + 1, node.lineno)]
            text = " ".join(c for c in above if not SECTION_REMARK.fullmatch(c))
        descriptions[node.target.id] = " ".join(text.split())
    return descriptions


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_each_flag_with_its_own_description_and_nothing_else(script, monkeypatch, capsys):
    """Rule: every flag of --help has a help text, and that text, unwrapped and without tyro's closing
    "(default: …)", is exactly its field's own description (`own_descriptions`). tyro takes a field's
    description from the comment lines above it when the field has no docstring and no comment on its line,
    all of them, and hands them on to the next field when that one has none either; so this fails for a
    section remark (SECTION_REMARK, like "# Algorithm specific arguments") that sits right above a field or
    its comment, and for a field that shows the comment of the field above it."""
    monkeypatch.setenv("COLUMNS", "200")
    module = importlib.import_module(script)
    helps = rendered_help(module, capsys)
    for name, description in own_descriptions(module).items():
        flag = "--" + name.replace("_", "-")
        assert description, f"{script} {flag} has no description of its own"
        shown = helps[flag].rsplit(" (default: ", 1)[0]
        assert shown == description, (
            f"{script} {flag}: --help shows {shown!r}, its description is {description!r}"
        )
