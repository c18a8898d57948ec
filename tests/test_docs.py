"""The docs' links into the scripts point at the functions and classes they name (benchmarks/doc_links.py)."""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import doc_links  # noqa: E402


def test_every_code_link_names_its_definition_and_lines():
    cache, problems, links = {}, [], 0
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
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
