"""Text that people read on a terminal: names, descriptions, log values (issue 10, item 6).

A terminal is an output device with a command language: C0/C1 controls (ESC, CSI, OSC) move
the cursor, rewrite lines, set titles and clipboards; bidi overrides and zero-width characters
make text read differently from what it is. One definition of "printable" (Python's
`str.isprintable()`: no control, format, separator other than the space, surrogate, private-use
or unassigned character) decides both what the admin API refuses in names and descriptions and
what the CLI and the console log escape on display.
"""

from __future__ import annotations

import unicodedata

_CATEGORY = {
    "Cc": "a control character",
    "Cf": "a format character (bidi control, zero-width, tag)",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than U+0020",
}


def unprintable(text: str) -> str | None:
    """Why `text` may not be shown raw on a terminal (naming the code point, never echoing
    it), or None when it may."""
    for i, char in enumerate(text):
        if not char.isprintable():
            kind = _CATEGORY.get(unicodedata.category(char), "not printable")
            return (
                f"character {i + 1} is U+{ord(char):04X}, {kind}; names and descriptions "
                "must be printable text"
            )
    return None


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object) -> str:
    """`text` safe to print: every non-printable character becomes a visible escape such as
    `\\x1b` or `\\u202e`, whatever the server, the store or a client sent."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
