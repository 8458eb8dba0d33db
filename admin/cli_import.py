"""`tokenward token import` (keys from an old system) and the `--metadata` options.

The key to import is read from stdin (or `--key-file PATH`, `-` for stdin), never from the
command line, where it would land in the shell's history and in `ps` for every user. At a
terminal it is asked for without echo. One trailing line ending is dropped (what `echo` and
most editors leave); nothing else is changed. The key is never printed back.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

import orjson

from tokenward.cli_client import AdminClient, _split
from tokenward.cli_output import CliError, emit, humanize_date
from tokenward.gateway.text import printable

MAX_KEY_INPUT = 4096  # bytes read for a key: a key, not a file of them


def add_metadata_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metadata",
        action="append",
        metavar="KEY=VALUE",
        help="free-form note on the token, repeatable (a string value; see --metadata-json)",
    )
    p.add_argument("--metadata-json", metavar="JSON", help='metadata as a JSON object, e.g. \'{"tier": 2}\'')


def metadata_option(args: argparse.Namespace) -> dict[str, Any] | None:
    """The metadata the options give (--metadata pairs over --metadata-json), or None."""
    pairs = getattr(args, "metadata", None) or []
    text = getattr(args, "metadata_json", None)
    if text is None and not pairs:
        return None
    data: dict[str, Any] = {}
    if text is not None:
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--metadata-json: not JSON ({exc})") from None
        if not isinstance(loaded, dict):
            raise CliError('--metadata-json: expected a JSON object, e.g. {"owner": "alice"}')
        data.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata {pair!r}: expected KEY=VALUE, e.g. --metadata owner=alice")
        data[key] = value
    return data


def metadata_lines(data: dict[str, Any]) -> str:
    """`token get`: the metadata under the table, one key a line."""
    notes = data.get("metadata") or {}
    if not notes:
        return ""
    lines = ["Metadata:"]
    for key, value in notes.items():
        lines.append(f"  {key}: {value if isinstance(value, str) else orjson.dumps(value).decode()}")
    return "\n" + "\n".join(lines)


def read_key(key_file: str | None) -> str:
    """The key to import, from `key_file` ('-' or None: stdin; at a terminal, asked for)."""
    if key_file is None or key_file == "-":
        if sys.stdin.isatty():
            raw = getpass.getpass("Key to import (not echoed): ")
        else:
            raw = sys.stdin.read(MAX_KEY_INPUT + 1)
    else:
        try:
            with Path(key_file).open(encoding="utf-8") as handle:
                raw = handle.read(MAX_KEY_INPUT + 1)
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--key-file {key_file}: cannot read it ({type(exc).__name__})") from None
    if len(raw) > MAX_KEY_INPUT:
        raise CliError(f"the key input is over {MAX_KEY_INPUT} bytes: give one key, not a file of them")
    key = raw[:-2] if raw.endswith("\r\n") else raw[:-1] if raw.endswith("\n") else raw
    if not key:
        raise CliError("no key given: pipe it on stdin or name a file with --key-file")
    return key


def add_import_options(p: argparse.ArgumentParser) -> None:
    """`token import`'s options beside --name, --scopes, --description and the expiry."""
    p.add_argument("--key-file", metavar="PATH", help="read the key from this file (- or absent: stdin)")
    p.add_argument(
        "--environment",
        choices=["live", "test"],
        help="live or test (default: test for a key labelled as one, e.g. sk_test_..., else live)",
    )
    p.add_argument("--constraint", action="append", metavar="NAME=VALUE", help="e.g. api=pets, repeatable")
    p.add_argument("--allow-cidr", action="append", help="client CIDR allowed to use the key, repeatable")
    add_metadata_options(p)


def _constraint(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise CliError(f"--constraint {printable(text)!r}: expected NAME=VALUE, e.g. --constraint api=pets")
    return key, value


def token_import(client: AdminClient, base: str, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"name": args.name, "key": read_key(args.key_file), "scopes": _split(args.scopes)}
    for field in ("description", "expires_in", "expires_at", "environment"):
        if getattr(args, field, None):
            body[field] = getattr(args, field)
    if args.constraint:
        body["constraints"] = dict(_constraint(c) for c in args.constraint)
    if args.allow_cidr:
        body["allowed_cidrs"] = list(args.allow_cidr)
    notes = metadata_option(args)
    if notes is not None:
        body["metadata"] = notes
    data = client.call("POST", f"{base}/import", body)
    for warning in data.get("warnings") or ():
        print(f"warning: {printable(str(warning))}", file=sys.stderr)
    fields = [
        ("ID", data["id"]),
        ("Name", data["name"]),
        ("Shown as", data["display_prefix"]),
        ("Scopes", ", ".join(data["scopes"])),
        ("Environment", data.get("environment") or "live"),
        ("Expires", humanize_date(data.get("expires_at"))),
    ]
    width = max(len(label) for label, _ in fields) + 1
    human = "\n".join(
        [
            "✓ Key imported: it works at the gateway as this token (LEGACY).",
            "",
            *(f"  {(label + ':').ljust(width)} {value}" for label, value in fields),
            "",
            f"  Retire it with: tokenward token rotate {data['id']} --team {data['team']}",
        ]
    )
    emit(data, args.json, human)
