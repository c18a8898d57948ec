"""Every script's command line: `--help` explains every flag in one line, and the README's commands parse."""

import ast
import importlib
import os
import re
import shlex

import pytest
import tyro

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["dime_bc", "dime_awbc", "crr_ls", "dime_multi", "dime_finetune", "dime_morl"]


def args_fields(script: str) -> list[tuple[str, str | None]]:
    """(field, its description or None) of the script's Args dataclass, read from the source as tyro reads
    it: the docstring below the field (as CleanRL writes them), else the comment on the field's line, else
    the comment line right above it. A docstring's lines are joined into one."""
    lines = open(os.path.join(ROOT, f"{script}.py")).read().splitlines()
    tree = ast.parse("\n".join(lines))
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Args"]
    out = []
    for node, after in zip(cls.body, [*cls.body[1:], None]):
        if not isinstance(node, ast.AnnAssign):
            continue
        line = lines[node.end_lineno - 1]
        above = lines[node.lineno - 2].strip()
        doc = None
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            doc = " ".join(after.value.value.split())
        elif "  # " in line:
            doc = line.split("  # ", 1)[1]
        elif above.startswith("# "):
            doc = above[2:]
        out.append((node.target.id, doc))
    return out


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_has_a_one_line_description(script):
    fields = args_fields(script)
    assert len(fields) > 20
    for name, doc in fields:
        assert doc and doc.strip() and "\n" not in doc.strip(), (
            f"{script} --{name} lacks a one-line description"
        )


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_flag_hides_a_comment_above_it_behind_a_comment_on_its_line(script):
    """tyro shows a field's own-line comment and drops the comment above it: a flag has one or the other."""
    lines = open(os.path.join(ROOT, f"{script}.py")).read().splitlines()
    (cls,) = [n for n in ast.parse("\n".join(lines)).body if isinstance(n, ast.ClassDef) and n.name == "Args"]
    for node in cls.body:
        if isinstance(node, ast.AnnAssign):
            above, line = lines[node.lineno - 2].strip(), lines[node.end_lineno - 1]
            assert not (above.startswith("# ") and "  # " in line), f"{script} --{node.target.id}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_shows_every_flag_with_its_description(script, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(module.Args, args=["--help"], description=module.__doc__.split("\n\n")[0])
    out = re.sub(r"[│╭╮╰╯─\s]+", " ", capsys.readouterr().out)  # the help box, unwrapped
    assert exit_info.value.code == 0
    for name, doc in args_fields(script):
        assert f"--{name.replace('_', '-')}" in out
        assert " ".join(doc.split()[:4]) in out, f"{script} --help lacks the description of --{name}"


def readme_commands() -> list[list[str]]:
    """The `python <script>.py ...` lines of README.md's code blocks."""
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if re.match(r"python \w+\.py ", line)]


def test_readme_commands_parse_with_the_scripts_flags():
    commands = readme_commands()
    assert any(c[0] == "dime_bc.py" for c in commands)
    for script, *flags in commands:
        module = importlib.import_module(script[: -len(".py")])
        tyro.cli(module.Args, args=flags)  # an unknown or misspelt flag exits here
