"""man/taskschedctl.1 and man/taskschedd.8 against the click commands they document.

Both ways: every command, option and argument click knows is documented where it belongs
(an option as a .TP tag in its command's .SS), and the pages show no command, option or
signal the code does not have. A new option without documentation fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import taskschedd
from taskschedctl import common as ctl_common
from taskschedctl.cli import cli as ctl_group
from taskschedd.cli import command as daemon_command
from taskschedd.config import Config

ROOT = Path(__file__).resolve().parents[2]
CTL_PAGE = ROOT / "man" / "taskschedctl.1"
DAEMON_PAGE = ROOT / "man" / "taskschedd.8"

#: Options that every taskschedctl command (but those named in GLOBAL OPTIONS) accepts
#: after its name too; documented once, under GLOBAL OPTIONS.
SHARED = frozenset({"-c", "--config", "--store"})

FLAG = re.compile(r"(?<![\w/.$-])(--?[A-Za-z0-9][A-Za-z0-9-]*)")
SIGNAL = re.compile(r"\bSIG[A-Z0-9]+\b")


# -- reading roff ---------------------------------------------------------------------------


def plain(roff: str) -> str:
    """A roff line without font changes and escapes, as a reader sees its words."""
    text = re.sub(r"\\f(?:\[[^]]*\]|\(..|.)", "", roff)
    for escape, char in (
        ("\\-", "-"),
        ("\\(aq", "'"),
        ("\\(dq", '"'),
        ("\\e", "\\"),
        ("\\&", ""),
        ("\\%", ""),
    ):
        text = text.replace(escape, char)
    return text


@dataclasses.dataclass
class Page:
    """A man page as lines (comments dropped), its .SH sections and their .SS parts."""

    path: Path
    lines: list[str]

    @classmethod
    def read(cls, path: Path) -> Page:
        lines = [
            line
            for line in path.read_text().splitlines()
            if not line.startswith(('.\\"', "'\\\"", '\\"'))
        ]
        return cls(path, lines)

    def section(self, name: str) -> list[str]:
        sections = _split(self.lines, ".SH ", first_word=False)
        assert name in sections, f"{self.path.name}: no section {name}"
        return sections[name]

    def subsections(self, name: str) -> dict[str, list[str]]:
        """The .SS parts of a section, keyed by the first word of their heading."""
        return _split(self.section(name), ".SS ", first_word=True)


def _split(lines: list[str], macro: str, *, first_word: bool) -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(macro):
            heading = plain(line[len(macro) :]).strip().strip('"')
            if first_word:
                heading = heading.split()[0] if heading else ""
            current = parts.setdefault(heading, [])
        elif current is not None:
            current.append(line)
    return parts


def text_of(line: str) -> str:
    """What a line prints: the arguments of a font macro (.B, .BR ...) joined as roff
    joins them, or the line itself; as plain text."""
    m = re.fullmatch(r"\.([BIR]{1,2})\s+(.*)", line)
    if m is None:
        return plain(line)
    found = re.findall(r'"((?:[^"]|"")*)"|(\S+)', m[2])
    args = [quoted.replace('""', '"') or bare for quoted, bare in found]
    return plain((" " if len(m[1]) == 1 else "").join(args))


def tags(lines: list[str]) -> list[str]:
    """The tag lines of .TP/.TQ paragraphs, as plain text."""
    return [
        text_of(lines[i + 1])
        for i, line in enumerate(lines[:-1])
        if line.split()[:1] in ([".TP"], [".TQ"])
    ]


def tag_flags(lines: list[str]) -> list[set[str]]:
    """The option flags of each tag that has any (-c, --config ...)."""
    found = [set(FLAG.findall(tag)) for tag in tags(lines)]
    return [f for f in found if f]


def table_signals(lines: list[str]) -> set[str]:
    """Signal names in the first column of the tbl tables among the lines."""
    names: set[str] = set()
    in_table = in_data = False
    for line in lines:
        if line.startswith(".TS"):
            in_table, in_data = True, False
        elif line.startswith(".TE"):
            in_table = False
        elif in_table and not in_data:
            in_data = line.rstrip().endswith(".")  # the format line ends the preamble
        elif in_table and "\t" in line:
            names |= set(SIGNAL.findall(plain(line.split("\t", 1)[0])))
    return names


# -- reading click ----------------------------------------------------------------------------


def contexts(group: click.Group) -> dict[str, click.Context]:
    """A click context per command, child of the group's (for its help option names)."""
    root = click.Context(group, info_name="taskschedctl", **group.context_settings)
    return {
        name: click.Context(cmd, info_name=name, parent=root)
        for name, cmd in group.commands.items()
        if not cmd.hidden
    }


def options(cmd: click.Command, ctx: click.Context) -> list[set[str]]:
    """The flags of each visible option, --help included."""
    return [
        set(p.opts) | set(p.secondary_opts)
        for p in cmd.get_params(ctx)
        if isinstance(p, click.Option) and not p.hidden
    ]


def arguments(cmd: click.Command) -> list[str]:
    """The names users see for the positional arguments (CLASS, ID, SHELL ...)."""
    return [
        (p.metavar or (p.name or "").upper()).strip("[].")
        for p in cmd.params
        if isinstance(p, click.Argument)
    ]


def all_flags(groups: Iterable[set[str]]) -> set[str]:
    return set().union(*groups)


# -- checks -----------------------------------------------------------------------------------


def check_options(where: str, documented: list[set[str]], code: list[set[str]]) -> list[str]:
    """Each option of the code is one tag (all its flags in it); each tag is an option."""
    problems = []
    for flags in code:
        if not any(flags <= tag for tag in documented):
            problems.append(f"{where}: option {'/'.join(sorted(flags))} is not documented")
    known = all_flags(code)
    for tag in documented:
        for flag in sorted(tag - known):
            problems.append(f"{where}: documents {flag}, which the code does not have")
    return problems


def check_ctl_page(page: Page, group: click.Group) -> list[str]:
    problems: list[str] = []
    ctxs = contexts(group)
    root = click.Context(group, info_name="taskschedctl", **group.context_settings)
    global_options = options(group, root)
    problems += check_options(
        "GLOBAL OPTIONS", tag_flags(page.section("GLOBAL OPTIONS")), global_options
    )
    documented = page.subsections("COMMANDS")
    for name in sorted(set(documented) - set(ctxs)):
        problems.append(f"COMMANDS: documents a command {name!r} that taskschedctl does not have")
    help_flags = set(root.help_option_names)
    global_text = plain("\n".join(page.section("GLOBAL OPTIONS")))
    for name, ctx in sorted(ctxs.items()):
        if name not in documented:
            problems.append(f"COMMANDS: command {name!r} is not documented (no .SS {name})")
            continue
        cmd, lines = ctx.command, documented[name]
        code = options(cmd, ctx)
        flags = all_flags(code)
        if not flags >= SHARED and not re.search(rf"\b{name}\b", global_text):
            problems.append(
                f"GLOBAL OPTIONS: {name} does not take -c/--store after its name; say so"
            )
        own = [f for f in code if not f <= SHARED and not f <= help_flags]
        problems += check_options(f"COMMANDS/{name}", tag_flags(lines), own)
        text = plain("\n".join(lines))
        for metavar in arguments(cmd):
            if not re.search(rf"(?<!\w){re.escape(metavar)}(?!\w)", text):
                problems.append(f"COMMANDS/{name}: argument {metavar} is not shown")
    problems += check_mentions(page, [Program.of_group(group)])
    return problems


@dataclasses.dataclass
class Program:
    """What a page may mention of a program: its options, before and after a command."""

    name: str
    flags: set[str]  # the program's own (before any command name)
    commands: dict[str, set[str]]  # command -> the options it takes

    @classmethod
    def of_group(cls, group: click.Group) -> Program:
        root = click.Context(group, info_name=group.name, **group.context_settings)
        commands = {
            name: all_flags(options(ctx.command, ctx)) for name, ctx in contexts(group).items()
        }
        return cls("taskschedctl", all_flags(options(group, root)), commands)

    @classmethod
    def of_command(cls, cmd: click.Command) -> Program:
        return cls("taskschedd", all_flags(options(cmd, click.Context(cmd))), {})

    def anywhere(self) -> set[str]:
        return self.flags.union(*self.commands.values())


@dataclasses.dataclass
class _Words:
    """Where a walk through the words of a command line is."""

    program: Program | None = None
    command: str | None = None  # None: none seen yet; "": words that are no command
    value_next: bool = False  # the next word is an option's value


SEPARATORS = {"|", "||", "&&", ";", ";;"}
TAKES_VALUE = {"-c", "--config", "--store"}


def check_mentions(page: Page, programs: list[Program]) -> list[str]:
    """Every --flag anywhere on the page (text, tags, examples) is an option of what it
    follows, and every 'taskschedctl WORD' names a command.

    Words are read like a shell line: a program name, its options, its command, the
    command's options. A flag that follows no program name belongs to the page's own
    program (any of its options) in text, and to another tool (systemctl enable --now)
    in an example. An example line ending in a backslash continues on the next one.
    """
    by_name = {prog.name: prog for prog in programs}
    own = by_name[page.path.name.split(".")[0]]
    problems: list[str] = []
    in_example = False
    carried: _Words | None = None
    for line in page.lines:
        if line.startswith((".EX", ".EE")):
            in_example, carried = line.startswith(".EX"), None
            continue
        text = text_of(line)
        state = carried or _Words()
        for raw in text.split():
            word = re.sub(r"^.*\$\(", "", raw).strip("\"'()`")
            if word in by_name:
                state = _Words(by_name[word])
            elif raw in SEPARATORS:
                state = _Words()
            elif state.value_next:
                state.value_next = False
            elif m := FLAG.match(word):
                flag = m[1]  # without =VALUE, [=VALUE] or punctuation
                state.value_next = flag in TAKES_VALUE and word == flag
                if not flag.startswith("--") or (state.program is None and in_example):
                    continue
                allowed, owner = _allowed(state, own)
                if flag not in allowed:
                    problems.append(
                        f"{page.path.name}: {flag} is not an option of {owner}: {text.strip()!r}"
                    )
            elif state.program is not None and state.program.commands and state.command is None:
                name = word.strip("\"'()`,;.:")
                state.command = name if name in state.program.commands else ""
                if re.fullmatch(r"[a-z]+", name) and name not in state.program.commands:
                    problems.append(
                        f"{page.path.name}: '{state.program.name} {name}' is not a command: "
                        f"{text.strip()!r}"
                    )
            if raw.endswith(";"):
                state = _Words()
        carried = state if in_example and text.rstrip().endswith("\\") else None
    return problems


def _allowed(state: _Words, own: Program) -> tuple[set[str], str]:
    """The options a flag may be at this point of a line, and whose they are."""
    prog = state.program
    if prog is None:
        return own.anywhere(), own.name
    if state.command:
        return prog.commands[state.command], f"{prog.name} {state.command}"
    if state.command is None:
        return prog.flags, prog.name
    return prog.anywhere(), prog.name


def help_signals(help_text: str, heading: str) -> set[str]:
    """Signal names in the first column of a block of ``taskschedd --help``."""
    block = help_text.split(heading, 1)[1].split("\n\n", 1)[0]
    lines = [line for line in block.splitlines()[1:] if line.strip()]
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    names: set[str] = set()
    for line in lines:
        if len(line) - len(line.lstrip()) == indent:
            names |= set(SIGNAL.findall(re.split(r"\s{2,}", line.strip())[0]))
    return names


def check_daemon_page(page: Page, cmd: click.Command) -> list[str]:
    ctx = click.Context(cmd, info_name="taskschedd", **cmd.context_settings)
    code = options(cmd, ctx)
    problems = check_options("OPTIONS", tag_flags(page.section("OPTIONS")), code)
    problems += check_mentions(page, [Program.of_command(cmd), Program.of_group(ctl_group)])
    return problems


# -- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctl_page() -> Page:
    return Page.read(CTL_PAGE)


@pytest.fixture(scope="module")
def daemon_page() -> Page:
    return Page.read(DAEMON_PAGE)


@pytest.fixture(scope="module")
def daemon_help() -> str:
    result = CliRunner().invoke(daemon_command, ["--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


def test_taskschedctl_page_documents_every_command_and_option_and_no_other(
    ctl_page: Page,
) -> None:
    assert check_ctl_page(ctl_page, ctl_group) == []


def test_taskschedd_page_documents_every_option_and_no_other(daemon_page: Page) -> None:
    assert check_daemon_page(daemon_page, daemon_command) == []


def test_an_undocumented_option_or_command_fails_the_check(ctl_page: Page) -> None:
    """The check has teeth: a new option, a new command, a stale tag are all caught."""
    group = copy.copy(ctl_group)
    group.commands = dict(ctl_group.commands)
    purge = copy.copy(ctl_group.commands["purge"])
    purge.params = [*purge.params, click.Option(["--dry-run"], is_flag=True)]
    group.commands["purge"] = purge
    group.commands["frobnicate"] = click.Command("frobnicate")
    problems = check_ctl_page(ctl_page, group)
    assert any("--dry-run is not documented" in p for p in problems), problems
    assert any("'frobnicate' is not documented" in p for p in problems), problems

    end = ctl_page.lines.index(".SH EXIT STATUS")  # the end of COMMANDS
    extra = [".SS show", ".TP", ".B \\-\\-verbose", ".EX", "$ taskschedctl frob \\-\\-all", ".EE"]
    stale = Page(ctl_page.path, [*ctl_page.lines[:end], *extra, *ctl_page.lines[end:]])
    problems = check_ctl_page(stale, ctl_group)
    assert any("COMMANDS/show: documents --verbose" in p for p in problems), problems
    assert any("'taskschedctl frob' is not a command" in p for p in problems), problems


def test_master_signals_match_taskschedd_help(daemon_page: Page, daemon_help: str) -> None:
    in_help = help_signals(daemon_help, "Signals to the master:")
    assert {"SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGCHLD"} <= in_help
    assert table_signals(daemon_page.subsections("SIGNALS")["Master"]) == in_help


def test_worker_signals_match_taskschedd_help(daemon_page: Page, daemon_help: str) -> None:
    in_help = help_signals(daemon_help, "Signals to a worker")
    assert {"SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2"} <= in_help
    assert table_signals(daemon_page.subsections("SIGNALS")["Workers"]) == in_help


def test_exit_statuses_match_the_code(ctl_page: Page, daemon_page: Page, daemon_help: str) -> None:
    ctl_codes = set(re.findall(r"^\s+(\d+)\s", ctl_common.EXIT_CODES, re.M))
    assert {"0", "1", "2", "69", "78", "124", "130", "141"} <= ctl_codes
    assert set(tags(ctl_page.section("EXIT STATUS"))) == ctl_codes
    daemon_line = daemon_help.split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    daemon_codes = set(re.findall(r"\b(\d+) [a-z]", daemon_line))
    assert daemon_codes and daemon_codes <= set(tags(daemon_page.section("EXIT STATUS")))


def test_environment_names_the_option_variables(ctl_page: Page, daemon_page: Page) -> None:
    envvars = {p.envvar for p in ctl_group.params if isinstance(p, click.Option) and p.envvar}
    assert envvars == {"TASKSCHED_CONFIG", "TASKSCHED_STORE"}
    assert envvars <= set(tags(ctl_page.section("ENVIRONMENT")))
    assert {"TASKSCHED_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC"} <= set(
        tags(daemon_page.section("ENVIRONMENT"))
    )


def test_configuration_summary_names_every_top_level_key(daemon_page: Page) -> None:
    text = plain("\n".join(daemon_page.section("CONFIGURATION")))
    missing = [f.name for f in dataclasses.fields(Config) if not re.search(rf"\b{f.name}\b", text)]
    assert missing == []


@pytest.mark.parametrize("path", [CTL_PAGE, DAEMON_PAGE], ids=lambda p: p.name)
def test_pages_name_the_current_version(path: Path) -> None:
    th = next(line for line in path.read_text().splitlines() if line.startswith(".TH "))
    assert f'"taskschedd {taskschedd.__version__}"' in th
