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


# Printable by Python's rule, yet drawn as nothing: default-ignorable code points that are not
# format characters (Hangul fillers, the combining grapheme joiner, Mongolian and Khmer
# invisibles, variation selectors other than the text/emoji pair U+FE0E/U+FE0F that emoji use)
# and the braille blank. A name made of them looks blank, or like another name.
_INVISIBLE = frozenset(
    {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x2800, 0x3164, 0xFFA0}
    | set(range(0xFE00, 0xFE0E))
    | set(range(0xE0100, 0xE01F0))
)


def shown(char: str) -> bool:
    """True when `char` may be written raw on a terminal: printable and not invisible."""
    return char.isprintable() and ord(char) not in _INVISIBLE


def all_shown(text: str) -> bool:
    """True when every character of `text` may be written raw (see `shown`)."""
    if text.isascii():
        return text.isprintable()
    return text.isprintable() and not any(ord(c) in _INVISIBLE for c in text)


def unprintable(text: str) -> str | None:
    """Why `text` may not be shown raw on a terminal (naming the code point, never echoing
    it), or None when it may."""
    for i, char in enumerate(text):
        if not shown(char):
            kind = _CATEGORY.get(unicodedata.category(char), "an invisible character")
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
    if all_shown(text):
        return text
    return "".join(c if shown(c) else _escape(c) for c in text)
