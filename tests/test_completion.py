"""Shell completion (issue 13, item 6): `tokenward completion bash|zsh|fish` prints a script
generated from the CLI's argparse parser. Each script is syntax-checked by its own shell
(zsh and fish installed from Debian's packages when missing) and then driven the way the
shell drives it at a TAB: every subcommand of every node, every option, option values and
argument choices come out as the parser declares them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.debian import installed
from tests.helpers.gateway import ROOT
from tokenward.cli import build_parser
from tokenward.completion import Node, command_tree, completion_script

NODES = list(command_tree(build_parser()))
WITH_COMMANDS = [node for node in NODES if node.commands]


def _script(tmp_path: Path, shell: str) -> Path:
    path = tmp_path / f"tokenward.{shell}"
    path.write_text(completion_script(build_parser(), shell))
    return path


def _names(node: Node) -> list[str]:
    return [name for name, _ in node.commands]


def test_the_tree_is_the_parsers() -> None:
    """The walk finds what the parser declares (spot checks of each kind of thing)."""
    by_key = {node.key: node for node in NODES}
    assert _names(by_key["tokenward"])[:2] == ["serve", "demo"] and "completion" in _names(by_key["tokenward"])
    assert set(_names(by_key["tokenward token"])) >= {"create", "list", "revoke", "rotate"}
    create = by_key["tokenward token create"]
    assert "--scopes" in create.valued and "--json" not in create.valued and "--help" not in create.valued
    (level,) = [o for o in by_key["tokenward demo"].options if "--log-level" in o.flags]
    assert level.choices == ("debug", "info", "warning", "error")
    assert by_key["tokenward completion"].arguments == ("bash", "zsh", "fish")


def test_the_cli_prints_the_generated_scripts(tmp_path: Path) -> None:
    for shell in ("bash", "zsh", "fish"):
        done = subprocess.run(
            [sys.executable, "-m", "tokenward", "completion", shell],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == completion_script(build_parser(), shell)


# -- bash --------------------------------------------------------------------------------------
_BASH_DRIVER = """
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_tokenward
printf '%s\\n' "${COMPREPLY[@]}"
"""


def bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers at a TAB after `words` (the last one is the word being completed)."""
    done = subprocess.run(
        ["bash", "-c", _BASH_DRIVER, "bash", str(script), *words],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _script(tmp_path_factory.mktemp("bash"), "bash")


def test_the_bash_script_is_valid_bash(bash_script: Path) -> None:
    done = subprocess.run(["bash", "-n", str(bash_script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    registered = subprocess.run(
        ["bash", "-c", f'source "{bash_script}" && complete -p tokenward'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert registered.stdout.strip() == "complete -o default -F _tokenward tokenward", registered.stderr


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["tok"], ["token"]),
        (["to"], ["token"]),
        (["token", "cr"], ["create"]),
        (["token", "r"], ["revoke", "restore", "rotate"]),
        (["token", "create", "--sc"], ["--scopes"]),
        (["token", "create", "--team", "platform", "--ex"], ["--expires-in", "--expires-at"]),
        (["demo", "--log-level", ""], ["debug", "info", "warning", "error"]),
        (["demo", "--log-level", "w"], ["warning"]),
        (["token", "list", "--status", "a"], ["active"]),
        (["completion", ""], ["bash", "zsh", "fish"]),
        (["config", "c"], ["check"]),
        # an option's value is never read as a subcommand: `--team token` stays in `audit`
        (["audit", "--team", "token", "--j"], ["--json"]),
        (["serve", "--config", ""], []),  # a file name: bash's default completion (-o default)
        (["--v"], ["--version"]),
    ],
)
def test_bash_completes_as_the_parser_says(bash_script: Path, words: list[str], offered: list[str]) -> None:
    assert bash_complete(bash_script, "tokenward", *words) == offered


@pytest.mark.parametrize("node", WITH_COMMANDS, ids=lambda n: n.key)
def test_bash_offers_every_subcommand_and_option_of_every_node(bash_script: Path, node: Node) -> None:
    words = node.path[1:]
    assert bash_complete(bash_script, "tokenward", *words, "") == _names(node)
    flags = [flag for option in node.options for flag in option.flags if flag.startswith("-")]
    assert bash_complete(bash_script, "tokenward", *words, "-") == flags


# -- zsh ---------------------------------------------------------------------------------------
def _zsh() -> str:
    return installed("zsh", lambda: shutil.which("zsh"))


# Outside a completion widget `words` and `CURRENT` are plain parameters and compadd, _describe
# and _files are not defined: these stand-ins print what the script offers.
_ZSH_DRIVER = """
compdef() { :; }
compadd() { print -l -- ${(P)2}; }
_describe() { print -l -- ${${(P)4}%%:*}; }
_files() { print -- '<files>'; }
source "$1"; shift
words=("$@"); CURRENT=$#
_tokenward
"""


def zsh_complete(zsh: str, script: Path, *words: str) -> list[str]:
    done = subprocess.run(
        [zsh, "-f", "-c", _ZSH_DRIVER, "zsh", str(script), *words],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_the_zsh_script_is_valid_zsh_and_completes(tmp_path: Path) -> None:
    zsh = _zsh()
    script = _script(tmp_path, "zsh")
    assert script.read_text().startswith("#compdef tokenward\n")  # loadable from $fpath as _tokenward
    done = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "token" in zsh_complete(zsh, script, "tokenward", "tok")  # _describe gets them all; zsh filters
    assert zsh_complete(zsh, script, "tokenward", "token", "") == _names({n.key: n for n in NODES}["tokenward token"])
    assert zsh_complete(zsh, script, "tokenward", "demo", "--log-level", "") == ["debug", "info", "warning", "error"]
    assert zsh_complete(zsh, script, "tokenward", "audit", "--team", "token", "") == ["<files>"]
    assert "--scopes" in zsh_complete(zsh, script, "tokenward", "token", "create", "-")
    assert zsh_complete(zsh, script, "tokenward", "completion", "") == ["bash", "zsh", "fish"]


# -- fish --------------------------------------------------------------------------------------
def fish_complete(fish: str, script: Path, line: str) -> list[str]:
    """fish's own answer for `line` (`complete -C`), the candidates without descriptions."""
    done = subprocess.run(
        [fish, "--no-config", "-c", f"source {script}; complete -C {line!r}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [candidate.split("\t")[0] for candidate in done.stdout.splitlines()]


def test_the_fish_script_is_valid_fish_and_completes(tmp_path: Path) -> None:
    fish = installed("fish", lambda: shutil.which("fish"))
    script = _script(tmp_path, "fish")
    done = subprocess.run([fish, "--no-execute", str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert fish_complete(fish, script, "tokenward tok") == ["token"]
    assert fish_complete(fish, script, "tokenward token cr") == ["create"]
    assert set(fish_complete(fish, script, "tokenward demo --log-level ")) == {"debug", "info", "warning", "error"}
    assert "--scopes" in fish_complete(fish, script, "tokenward token create --")
    assert set(fish_complete(fish, script, "tokenward completion ")) == {"bash", "zsh", "fish"}
    top = {n.key: n for n in NODES}["tokenward"]
    assert set(fish_complete(fish, script, "tokenward ")) == set(_names(top))


def test_the_scripts_name_the_tokenward_command_only() -> None:
    """Nothing in a script depends on where the repository is."""
    for shell in ("bash", "zsh", "fish"):
        assert str(ROOT) not in completion_script(build_parser(), shell)
