"""Griffe extension for the documentation site: docstrings are plain text with maths, rendered as Markdown.

Three clashes, fixed before rendering without changing the text:

- stars: the maths writes optimal points with a star (y*(x), v* = A⁻¹b, x* solves …), which Markdown reads
  as emphasis ("cos(J v, J v*) against … v* = A⁻¹b" renders half in italics).  A star that closes a word
  (after a letter, digit or closing bracket) and is not part of ``**bold**`` or of an intended ``*emphasis*``
  span is escaped;
- underscores: subscripts (∇_x f, x_{k+1}) pair up as emphasis and vanish; every underscore in prose is
  escaped;
- layout: an indented block right after a line of prose (a table, an update rule, a list of settings)
  would be merged into that paragraph; a blank line before it makes it the preformatted block its author
  laid out, and a reStructuredText "::" at the end of the line before becomes ":".

Code is left alone: inline code spans and indented or fenced blocks, where a backslash would show.
"""

from __future__ import annotations

import re

import griffe

#: an intended emphasis span: opening star after a non-word character, closing star before one
EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[^\s*])[^*\n]*?(?<=[^\s*\\])\*(?![\w*])")
#: a single star that closes a word: y*, v*(x), A)*
MATH_STAR = re.compile(r"(?<=[\w)\]])(?<!\*)\*(?!\*)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
#: an underscore not already escaped
UNDERSCORE = re.compile(r"(?<!\\)_")


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
        out.append(UNDERSCORE.sub(r"\\_", "".join(kept)))
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
        if indented and not in_block and not previous_blank and not fenced:
            if lines[-1].rstrip().endswith("::"):
                lines[-1] = lines[-1].rstrip()[:-1]
            lines.append("")  # the block its author laid out, not a continuation of the paragraph above
            previous_blank = True
        in_block = indented and (in_block or previous_blank) or (in_block and not stripped)
        if not (fenced or in_block) and stripped.endswith("::") and not stripped.startswith(":"):
            line = line.rstrip()[:-1]
        lines.append(line if fenced or in_block or not stripped else _escape_prose(line))
        previous_blank = not stripped
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


class MathStars(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = escape_math_stars(obj.docstring.value)
