"""Griffe extension for the documentation site: docstrings are plain text with maths, rendered as Markdown.

One clash: the maths writes optimal points with a star (y*(x), v* = A⁻¹b, x* solves …), which Markdown reads
as emphasis, so that "cos(J v, J v*) against … v* = A⁻¹b" renders half in italics.  Before rendering, a star
that closes a word (after a letter, digit or closing bracket) and is not part of ``**bold**`` or of an
intended ``*emphasis*`` span is escaped.  Code is left alone: inline code spans and indented code blocks
(the update rules), where a backslash would show.
"""

from __future__ import annotations

import re

import griffe

#: an intended emphasis span: opening star after a non-word character, closing star before one
EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[^\s*])[^*\n]*?(?<=[^\s*\\])\*(?![\w*])")
#: a single star that closes a word: y*, v*(x), A)*
MATH_STAR = re.compile(r"(?<=[\w)\]])(?<!\*)\*(?!\*)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")


def _escape_prose(line: str) -> str:
    out, last = [], 0
    for span in list(CODE_SPAN.finditer(line)) + [None]:
        start = span.start() if span else len(line)
        prose = line[last:start]
        kept, pos = [], 0
        for emphasis in EMPHASIS.finditer(prose):
            kept.append(MATH_STAR.sub(r"\\*", prose[pos:emphasis.start()]))
            kept.append(emphasis.group(0))
            pos = emphasis.end()
        kept.append(MATH_STAR.sub(r"\\*", prose[pos:]))
        out.append("".join(kept))
        if span:
            out.append(span.group(0))
            last = span.end()
    return "".join(out)


def escape_math_stars(text: str) -> str:
    """The docstring with math stars escaped outside code (indented blocks after a blank line, fences, spans)."""
    lines, in_block, fenced, previous_blank = [], False, False, True
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
            lines.append(line)
            previous_blank = False
            continue
        indented = len(line) - len(line.lstrip(" ")) >= 4 and bool(stripped)
        in_block = indented and (in_block or previous_blank) or (in_block and not stripped)
        lines.append(line if fenced or in_block or not stripped else _escape_prose(line))
        previous_blank = not stripped
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


class MathStars(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_math_stars(obj.docstring.value)
