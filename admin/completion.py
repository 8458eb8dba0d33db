"""Shell completion for the `tokenward` command line, generated from its argparse parser
(`tokenward completion bash|zsh|fish`), so a new subcommand or option completes without
anyone writing it twice.

`command_tree` walks the parser into one `Node` per (sub)command: its subcommands (with their
help), its options (which take a value, and the value's choices) and its free arguments. Each
shell's script carries that tree as `case` tables and one small walker, the same in all three:
it reads the words before the cursor, steps into a subcommand when a word names one, skips the
value after an option that takes one, and offers the subcommands, options or choices of the
node it ends on (files where nothing else applies).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SHELLS = ("bash", "zsh", "fish")


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]  # "-h", "--help"
    takes_value: bool
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True, slots=True)
class Node:
    """One (sub)command: `path` is the words that reach it, `tokenward` first."""

    path: tuple[str, ...]
    commands: tuple[tuple[str, str], ...]  # (name, help) of its subcommands
    options: tuple[Option, ...]
    arguments: tuple[str, ...]  # the choices of its free arguments (none: any word, a file)

    @property
    def key(self) -> str:
        return " ".join(self.path)

    @property
    def valued(self) -> tuple[str, ...]:
        """The flags after which the next word is the option's value."""
        return tuple(flag for option in self.options if option.takes_value for flag in option.flags)


def command_tree(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("tokenward",)) -> Iterator[Node]:
    """Every node under `parser` (itself first), depth first, in the parser's order."""
    commands: list[tuple[str, str]] = []
    children: list[tuple[str, argparse.ArgumentParser]] = []
    options: list[Option] = []
    arguments: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                commands.append((name, helps.get(name, "")))
                children.append((name, child))
        elif action.option_strings:
            choices = tuple(str(c) for c in action.choices) if action.choices else ()
            options.append(Option(tuple(action.option_strings), action.nargs != 0, choices, action.help or ""))
        elif action.choices:
            arguments += [str(c) for c in action.choices]
    yield Node(path, tuple(commands), tuple(options), tuple(arguments))
    for name, child in children:
        yield from command_tree(child, (*path, name))


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    nodes = list(command_tree(parser))
    render: dict[str, Callable[[list[Node]], str]] = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}
    return render[shell](nodes)


def _sh(text: str) -> str:
    """A single-quoted word for bash and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fish(text: str) -> str:
    """A single-quoted word for fish (which escapes \\ and ' inside single quotes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _words(items: tuple[str, ...] | list[str]) -> str:
    return _sh(" ".join(items))


def _flags(node: Node) -> tuple[str, ...]:
    return tuple(flag for option in node.options for flag in option.flags)


def _choices(nodes: list[Node]) -> list[tuple[str, tuple[str, ...]]]:
    """("<node> <flag>", choices) for every option with choices."""
    return [
        (f"{node.key} {flag}", option.choices)
        for node in nodes
        for option in node.options
        if option.choices
        for flag in option.flags
    ]


# -- bash --------------------------------------------------------------------------------------
_BASH_MAIN = r"""
_tokenward() {
  local cur=${COMP_WORDS[COMP_CWORD]} node=tokenward word i skip=0
  local _tw_subs _tw_opts _tw_valued _tw_args _tw_choices
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    if ((skip)); then
      skip=0
      continue
    fi
    _tokenward_node "$node"
    case $word in
      --*=*) ;;
      -*) if [[ " $_tw_valued " == *" $word "* ]]; then skip=1; fi ;;
      *) if [[ " $_tw_subs " == *" $word "* ]]; then node="$node $word"; fi ;;
    esac
  done
  _tokenward_node "$node"
  COMPREPLY=()
  if ((skip)); then
    _tokenward_choices "$node ${COMP_WORDS[COMP_CWORD-1]}"
    [[ -n $_tw_choices ]] && COMPREPLY=($(compgen -W "$_tw_choices" -- "$cur"))
  elif [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$_tw_opts" -- "$cur"))
  elif [[ -n $_tw_subs ]]; then
    COMPREPLY=($(compgen -W "$_tw_subs" -- "$cur"))
  elif [[ -n $_tw_args ]]; then
    COMPREPLY=($(compgen -W "$_tw_args" -- "$cur"))
  fi
  return 0  # nothing offered: -o default completes file names
}
complete -o default -F _tokenward tokenward
"""


def bash_script(nodes: list[Node]) -> str:
    lines = [
        "# bash completion for tokenward, generated from its command line parser. Load it with",
        "#   source <(tokenward completion bash)",
        "# or save it as ~/.local/share/bash-completion/completions/tokenward",
        "",
        "_tokenward_node() {  # the subcommands, options, options taking a value, argument choices of $1",
        "  case $1 in",
    ]
    for node in nodes:
        lines.append(
            f"    {_sh(node.key)}) _tw_subs={_words([n for n, _ in node.commands])}"
            f" _tw_opts={_words(_flags(node))} _tw_valued={_words(node.valued)}"
            f" _tw_args={_words(node.arguments)} ;;"
        )
    lines += ["    *) _tw_subs='' _tw_opts='' _tw_valued='' _tw_args='' ;;", "  esac", "}", ""]
    lines += ["_tokenward_choices() {  # the values of option $1 (\"<node> <flag>\")", "  case $1 in"]
    lines += [f"    {_sh(key)}) _tw_choices={_words(choices)} ;;" for key, choices in _choices(nodes)]
    lines += ["    *) _tw_choices='' ;;", "  esac", "}"]
    return "\n".join(lines) + "\n" + _BASH_MAIN


# -- zsh ---------------------------------------------------------------------------------------
_ZSH_MAIN = r"""
_tokenward() {
  local node=tokenward word i skip=0 found
  local -a _tw_subs _tw_opts _tw_valued _tw_args _tw_choices
  for (( i = 2; i < CURRENT; i++ )); do
    word=${words[i]}
    if (( skip )); then
      skip=0
      continue
    fi
    _tokenward_node $node
    case $word in
      --*=*) ;;
      -*) if (( ${_tw_valued[(Ie)$word]} )); then skip=1; fi ;;
      *)
        found=${${_tw_subs%%:*}[(Ie)$word]}  # (a nested expansion inside (( )) is always 0)
        if (( found )); then node="$node $word"; fi ;;
    esac
  done
  _tokenward_node $node
  if (( skip )); then
    _tokenward_choices "$node ${words[CURRENT-1]}"
    if (( $#_tw_choices )); then compadd -a _tw_choices; else _files; fi
  elif [[ ${words[CURRENT]} == -* ]]; then
    compadd -a _tw_opts
  elif (( $#_tw_subs )); then
    _describe -t commands 'tokenward command' _tw_subs
  elif (( $#_tw_args )); then
    compadd -a _tw_args
  else
    _files
  fi
}

if [[ $funcstack[1] == _tokenward ]]; then
  _tokenward "$@"
else
  compdef _tokenward tokenward
fi
"""


def _zsh_array(items: tuple[str, ...] | list[str]) -> str:
    return "(" + " ".join(_sh(item) for item in items) + ")"


def zsh_script(nodes: list[Node]) -> str:
    lines = [
        "#compdef tokenward",
        "# zsh completion for tokenward, generated from its command line parser. Load it with",
        "#   source <(tokenward completion zsh)        (after compinit)",
        "# or save it as _tokenward in a directory of $fpath.",
        "",
        "_tokenward_node() {  # the subcommands, options, options taking a value, argument choices of $1",
        "  case $1 in",
    ]
    for node in nodes:
        described = [f"{name}:{text.replace(':', chr(92) + ':')}" if text else name for name, text in node.commands]
        lines.append(
            f"    {_sh(node.key)}) _tw_subs={_zsh_array(described)} _tw_opts={_zsh_array(_flags(node))}"
            f" _tw_valued={_zsh_array(node.valued)} _tw_args={_zsh_array(node.arguments)} ;;"
        )
    lines += ["    *) _tw_subs=() _tw_opts=() _tw_valued=() _tw_args=() ;;", "  esac", "}", ""]
    lines += ["_tokenward_choices() {  # the values of option $1 (\"<node> <flag>\")", "  case $1 in"]
    lines += [f"    {_sh(key)}) _tw_choices={_zsh_array(choices)} ;;" for key, choices in _choices(nodes)]
    lines += ["    *) _tw_choices=() ;;", "  esac", "}"]
    return "\n".join(lines) + "\n" + _ZSH_MAIN


# -- fish --------------------------------------------------------------------------------------
_FISH_WALKER = r"""
function __tokenward_node --description 'the tokenward subcommand the command line is in'
    set -l words (commandline -opc)
    set -e words[1]
    set -l node tokenward
    set -l skip 0
    for word in $words
        if test $skip = 1
            set skip 0
            continue
        end
        switch $word
            case '--*=*'
            case '-*'
                contains -- $word (__tokenward_valued $node); and set skip 1
            case '*'
                contains -- $word (__tokenward_subs $node); and set node "$node $word"
        end
    end
    echo $node
end

function __tokenward_at --description 'is the command line in this tokenward subcommand?'
    test (__tokenward_node) = "$argv[1]"
end
"""


def _fish_table(name: str, rows: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    lines = [f"function {name}", "    switch $argv[1]"]
    for key, words in rows:
        if words:
            lines += [f"        case {_fish(key)}", "            printf '%s\\n' " + " ".join(_fish(w) for w in words)]
    return [*lines, "    end", "end", ""]


def _fish_option(option: Option) -> str:
    parts = []
    for flag in option.flags:
        if flag.startswith("--"):
            parts.append(f"-l {_fish(flag[2:])}")
        elif len(flag) == 2:
            parts.append(f"-s {_fish(flag[1:])}")
        else:
            parts.append(f"-o {_fish(flag[1:])}")
    if option.choices:
        parts.append(f"-x -a {_fish(' '.join(option.choices))}")
    elif option.takes_value:
        parts.append("-r")
    if option.help:
        parts.append(f"-d {_fish(option.help)}")
    return " ".join(parts)


def fish_script(nodes: list[Node]) -> str:
    lines = [
        "# fish completion for tokenward, generated from its command line parser. Load it with",
        "#   tokenward completion fish | source",
        "# or save it as ~/.config/fish/completions/tokenward.fish",
        "",
    ]
    lines += _fish_table("__tokenward_subs", [(n.key, tuple(name for name, _ in n.commands)) for n in nodes])
    lines += _fish_table("__tokenward_valued", [(n.key, n.valued) for n in nodes])
    lines.append(_FISH_WALKER)
    for node in nodes:
        at = f"-n {_fish('__tokenward_at ' + _fish(node.key))}"
        for name, text in node.commands:
            described = f" -d {_fish(text)}" if text else ""
            lines.append(f"complete -c tokenward {at} -f -a {_fish(name)}{described}")
        if node.arguments:
            lines.append(f"complete -c tokenward {at} -f -a {_fish(' '.join(node.arguments))}")
        lines += [f"complete -c tokenward {at} {_fish_option(option)}" for option in node.options]
    return "\n".join(lines) + "\n"
