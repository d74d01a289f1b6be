"""The command pages (docs/commands/, docs/guides/shielded-vm.md) against the real `sevsim`.

Five checks, so that the pages cannot drift from the app:

- every `sevsim …` command line in a shell block of those pages (`$ sevsim …` in a `console`
  block, `sevsim …` in an `sh` block, with its `\\` continuation lines) names a real command
  and real options: it is parsed against the Typer app with click's `make_context`, not run.
  Shell syntax after the command (`; echo $?`, `&&`, `|`, `>`, a `# comment`) is cut off
  first. A line whose comment ends in `exit 2` shows a usage error, and must not parse;
- every synopsis (a `sevsim …` line in a `text` block, with its indented continuation lines,
  or one with an optional `[--option …]` in a shell block) names a real command, and only
  options that command has;
- every top-level command has its page, docs/commands/<command>.md, every subcommand a
  heading on that page naming `sevsim <command> <subcommand>`, and every option of those
  commands is named on the page;
- a console block right after the line `<!-- checked -->` is run: each `$ sevsim …` line in
  it, from the repository's root, with stdout and stderr together (as an 80-column terminal
  shows them), and its output must be the lines that follow it on the page. A line that is
  just `…` there stands for any number of lines (output trimmed on the page). The command
  must exit 0 unless its line ends with a comment ending in `exit N`. Mark only examples
  whose output is deterministic and whose inputs are in the repository (or Debian's OVMF.fd:
  those skip unless it is the build the pages show).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from sevsim.cli.main import app

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ROOT / "docs" / "commands"
PAGES = [*sorted(COMMANDS.glob("*.md")), ROOT / "docs" / "guides" / "shielded-vm.md"]
CHECKED = "<!-- checked -->"
SHELL_STOPS = {";", "&&", "||", "|", ">", ">>", "<", "2>", "&", ")"}
FENCE = re.compile(r"^(`{3,})(\w*)\s*$")
# the OVMF image the pages' `sevsim measure` examples launch: Debian 12's ovmf 2022.11-6+deb12u2
OVMF = Path("/usr/share/ovmf/OVMF.fd")
OVMF_SHA256 = "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773"
SHELLS = ("console", "sh", "bash", "shell")
SYNOPSIS = re.compile(r" \[-")  # `[--option …]`: a synopsis, not a command line
EXIT = re.compile(r"#.*\bexit (\d+)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: where it starts, its language, its lines, if marked."""

    page: Path
    line: int
    language: str
    lines: tuple[str, ...]
    checked: bool


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of `page`, each marked checked if `<!-- checked -->` precedes it."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != opening.group(1):
            body.append(lines[index])
            index += 1
        previous = next((text.strip() for text in reversed(lines[:start]) if text.strip()), "")
        found.append(Block(page, start + 1, opening.group(2), tuple(body),
                           previous == CHECKED))
        index += 1
    return found


def command_lines(block: Block) -> list[str]:
    """The `sevsim …` command lines of a console block, continuation lines joined."""
    found: list[str] = []
    if block.language not in SHELLS:
        return found
    lines = list(block.lines)
    index = 0
    while index < len(lines):
        text = lines[index].strip()
        index += 1
        if block.language == "console":  # commands after the prompt, the rest is output
            if not text.startswith("$ "):
                continue
            text = text[2:]
        if not text.startswith("sevsim ") or SYNOPSIS.search(text):
            continue
        while text.endswith("\\") and index < len(lines):
            text = text[:-1] + " " + lines[index].strip()
            index += 1
        found.append(text)
    return found


def argv(command: str) -> list[str]:
    """The words `sevsim` gets from a shell command line, the shell's own syntax cut off."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words: list[str] = []
    for word in lexer:
        if word in SHELL_STOPS:
            break
        words.append(word)
    assert words[0] == "sevsim", command
    return words[1:]


def parse(words: list[str]) -> None:
    """Parse `sevsim WORDS` as the app would, without running it."""
    command = typer.main.get_command(app)
    path = ["sevsim"]
    rest = list(words)
    while hasattr(command, "commands"):
        assert rest, f"`{' '.join(path)}` needs a subcommand"
        name = rest.pop(0)
        assert name in command.commands, f"`{' '.join(path)}` has no command {name!r}"
        command = command.commands[name]
        path.append(name)
    # raises click's UsageError (unknown option, missing or malformed value) like the app
    command.make_context(" ".join(path), rest)


def usage_error(words: list[str]) -> bool:
    """Whether `sevsim WORDS` is a usage error (click's, exit status 2)."""
    try:
        parse(words)
    except Exception as error:  # click's UsageError, which typer vendors as a private module
        return getattr(error, "exit_code", None) == 2
    return False


def synopses(block: Block) -> list[str]:
    """The `sevsim …` synopses of a `text` block, indented continuation lines joined."""
    found: list[str] = []
    if block.language == "text":
        for text in block.lines:
            if text.startswith("sevsim "):
                found.append(text)
            elif text.startswith(" ") and found:
                found[-1] += " " + text.strip()
    elif block.language in SHELLS:
        found = [text for text in block.lines
                 if text.startswith("sevsim ") and SYNOPSIS.search(text)]
    return found


def synopsis_problems(synopsis: str) -> list[str]:
    """What a synopsis names that the app lacks: its command path, or an option."""
    command = typer.main.get_command(app)
    words = synopsis.split()[1:]
    path = ["sevsim"]
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
        path.append(command.name or "")
    if hasattr(command, "commands"):
        return [f"`{' '.join(path)}` needs a subcommand"]
    known = {name for param in command.params
             for name in [*param.opts, *getattr(param, "secondary_opts", [])]}
    named = re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", " ".join(words))
    return [f"`{' '.join(path)}` has no option {name}" for name in named if name not in known]


def all_synopses() -> list[tuple[str, str]]:
    return [(f"{block.page.relative_to(ROOT)}:{block.line}", line)
            for page in PAGES for block in blocks(page) for line in synopses(block)]


@pytest.mark.parametrize(("where", "synopsis"), all_synopses())
def test_every_synopsis_names_real_options(where: str, synopsis: str) -> None:
    assert not synopsis_problems(synopsis), where


def test_a_wrong_synopsis_is_caught() -> None:
    assert synopsis_problems("sevsim run ELF [--frob N]") == ["`sevsim run` has no option --frob"]
    assert synopsis_problems("sevsim kbs admin") == ["`sevsim kbs admin` needs a subcommand"]
    assert not synopsis_problems("sevsim guest sign ELF --key K --cert C [-o OUT]")


def all_command_lines() -> list[tuple[str, str]]:
    return [(f"{block.page.relative_to(ROOT)}:{block.line}", line)
            for page in PAGES for block in blocks(page) for line in command_lines(block)]


def test_the_pages_exist() -> None:
    assert (COMMANDS / "index.md").is_file()
    assert PAGES[-1].is_file()
    assert len(all_command_lines()) > 100


@pytest.mark.parametrize(("where", "line"), all_command_lines())
def test_every_command_line_parses(where: str, line: str) -> None:
    """A line the page says is a usage error (`# exit 2`) must be one."""
    expected = EXIT.search(line)
    if expected and expected.group(1) == "2":
        assert usage_error(argv(line)), f"{where}: `{line}` parses"
    else:
        parse(argv(line))


def test_a_wrong_command_line_does_not_parse() -> None:
    """The check above can fail: an unknown command, option or value is refused."""
    for line in ("sevsim run hello.elf --frob 1", "sevsim guest sign hello.elf --key k.pem",
                 "sevsim run hello.elf --vcpus two", "sevsim kbs admin keygen --out",
                 "sevsim show a.bin b.bin"):
        assert usage_error(argv(line)), line
    for line in ("sevsim frobnicate", "sevsim tpm"):
        with pytest.raises(AssertionError):
            parse(argv(line))


def test_every_command_has_a_page() -> None:
    root = typer.main.get_command(app)
    for name, command in getattr(root, "commands", {}).items():
        page = COMMANDS / f"{name}.md"
        assert page.is_file(), f"`sevsim {name}` has no page {page.relative_to(ROOT)}"
        headings = [text for text in page.read_text(encoding="utf-8").splitlines()
                    if text.startswith("#")]
        subcommands = list(getattr(command, "commands", {}).items())
        while subcommands:
            sub, inner = subcommands.pop(0)
            if hasattr(inner, "commands"):  # `kbs admin …`: a heading per leaf command
                subcommands += [(f"{sub} {leaf}", c) for leaf, c in inner.commands.items()]
                continue
            assert any(f"sevsim {name} {sub}" in text for text in headings), \
                f"{page.relative_to(ROOT)} has no heading for `sevsim {name} {sub}`"


def leaf_commands(command: Any, path: list[str]) -> list[tuple[str, Any]]:
    """(`sevsim …` path, command) of every runnable command under `command`."""
    if not hasattr(command, "commands"):
        return [(" ".join(path), command)]
    return [leaf for name, inner in command.commands.items()
            for leaf in leaf_commands(inner, [*path, name])]


def test_every_option_is_on_its_page() -> None:
    """Each option of a command is named (as a whole word) on its command's page."""
    root = typer.main.get_command(app)
    for name, command in getattr(root, "commands", {}).items():
        text = (COMMANDS / f"{name}.md").read_text(encoding="utf-8")
        for path, leaf in leaf_commands(command, ["sevsim", name]):
            for param in leaf.params:
                if param.param_type_name != "option":
                    continue
                for option in [*param.opts, *param.secondary_opts]:
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                        f"docs/commands/{name}.md does not name `{path} {option}`"


def checked_examples() -> list[tuple[str, str, list[str]]]:
    """(where, command line, the output lines the page shows) of every checked block."""
    found: list[tuple[str, str, list[str]]] = []
    for page in PAGES:
        for block in blocks(page):
            if not block.checked:
                continue
            current: tuple[str, list[str]] | None = None
            for text in block.lines:
                if text.startswith("$ "):
                    if current:
                        found.append((f"{page.relative_to(ROOT)}:{block.line}", *current))
                    current = (text[2:], [])
                else:
                    assert current, f"{page}:{block.line}: output before a command"
                    current[1].append(text)
            assert current, f"{page}:{block.line}: a checked block without a command"
            found.append((f"{page.relative_to(ROOT)}:{block.line}", *current))
    return found


def output_pattern(shown: list[str]) -> re.Pattern[str]:
    """The output a page shows as a regex: its lines exactly, a `…` line any lines."""
    parts = ["(?:.*\n)*?" if text.strip() == "…" else re.escape(text.rstrip()) + r"[ \t]*\n"
             for text in shown]
    return re.compile("".join(parts))


def test_there_are_checked_examples() -> None:
    assert len(checked_examples()) >= 8


@pytest.mark.parametrize(("where", "line", "shown"), checked_examples())
def test_checked_example_prints_what_the_page_shows(where: str, line: str,
                                                     shown: list[str]) -> None:
    words = argv(line)
    parse(words)
    if str(OVMF) in words and not (OVMF.is_file() and hashlib.sha256(
            OVMF.read_bytes()).hexdigest() == OVMF_SHA256):
        pytest.skip(f"{OVMF} is not the build the pages show (Debian 12's ovmf 2022.11-6+deb12u2)")
    expected = EXIT.search(line)
    # an 80-column terminal, whatever runs the test: rich sizes tables to it
    ran = subprocess.run([sys.executable, "-m", "sevsim", *words], cwd=ROOT, env={
        **os.environ, "COLUMNS": "80", "LINES": "25", "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=300, check=False)
    assert ran.returncode == (int(expected.group(1)) if expected else 0), ran.stdout
    output = "\n".join(text.rstrip() for text in ran.stdout.splitlines()) + "\n"
    assert output_pattern(shown).fullmatch(output), \
        f"{where}: `{line}` printed\n{output}"
