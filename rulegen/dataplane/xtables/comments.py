"""`-m comment --comment TEXT` arguments: written as kube-proxy writes them, and never able to break a line.

kube-proxy writes a comment bare when it is one word (`--comment
default/web:http`) and in double quotes when it holds blanks (`"default/web:http
cluster IP"`); the names the API server allows give nothing else, and the
golden files hold exactly those bytes. The loader refuses every other name,
but a payload goes to iptables-restore as root, so this module is the last
guard: any other text is written the way `iptables-save` writes it
(libxtables' xtables_save_string: bare only when all of [A-Za-z0-9_-],
otherwise in double quotes with a backslash before `"`, `\\` and `'`, which
iptables-restore reads back to the same text), with control and other
non-printable characters (newline, carriage return, the Unicode line
separators that Python's `splitlines` also breaks at) replaced by `?`, and
cut to what the comment match holds (255 bytes).
"""

from __future__ import annotations

import re

COMMENT_MAX = 255  # the kernel's comment match keeps 256 bytes, its final NUL included

# Text written bare: one word iptables-restore reads as is. iptables-save's
# own set ([A-Za-z0-9_-]) plus `.`, `:` and `/`, because kube-proxy writes
# `ns/name:port` bare; iptables-restore gives them no meaning.
_BARE = re.compile(r"[A-Za-z0-9_.:/-]+")
_ESCAPE = re.compile(r"[\"\\']")


def comment_arg(text: str, room: int = COMMENT_MAX) -> str:
    """TEXT as the one argument after `--comment`: bare or quoted, at most ROOM bytes once read back."""
    if len(text) <= room and _BARE.fullmatch(text):
        return text
    return '"' + quoted_body(text, room) + '"'


def quoted_body(text: str, room: int = COMMENT_MAX) -> str:
    """TEXT as it goes between double quotes: printable, cut to ROOM bytes, `"` `\\` `'` escaped."""
    if not text.isprintable():  # control characters, line and paragraph separators, lone surrogates
        text = "".join(c if c.isprintable() else "?" for c in text)
    raw = text.encode("utf-8")
    if len(raw) > room:
        text = raw[:room].decode("utf-8", "ignore")  # never half a character
    return _ESCAPE.sub(r"\\\g<0>", text)
