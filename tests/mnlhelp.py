"""What nft sends: `nft --debug=mnl -f` parsed back into netlink messages, to hold rulegen's encoder to them."""

from __future__ import annotations

import re
import subprocess

_HDR = re.compile(r"^\|\s*(\d{5})\s*\|\s*([A-Z-]{4})\s*\|")
_ATTR = re.compile(r"^\|(?:\x1b\[[0-9;]*m)?(\d{5})(?:\x1b\[[0-9;]*m)?\|(?:\x1b\[[0-9;]*m)?([N-][B-])(?:\x1b\[[0-9;]*m)?"
                   r"\|(?:\x1b\[[0-9;]*m)?(\d{5})(?:\x1b\[[0-9;]*m)?\|")
_DATA = re.compile(r"^\| ((?:[0-9a-f]{2} ){4}) \|\t\|\s+(?:data|extra header)\s+\|")


def mnl_messages(netns: str, script: str) -> list[tuple[int, bytes]]:
    """(message type, body after the nfgenmsg header) of every nf_tables message nft sends for SCRIPT in NETNS.

    The batch begin and end messages are left out; the script is committed.
    """
    cp = subprocess.run(["ip", "netns", "exec", netns, "nft", "--debug=mnl", "-f", "-"], input=script,
                        capture_output=True, text=True, check=True)
    out: list[tuple[int, bytes]] = []
    cur: list[bytes] | None = None
    mtype = 0
    header_seen = False
    for line in (cp.stdout + cp.stderr).splitlines():
        m = _HDR.match(line)
        if m and "|  type | flags  |" in line:
            if cur is not None and mtype >> 8 == 10:
                out.append((mtype & 0xFF, b"".join(cur)))
            mtype = int(m.group(1))
            cur = []
            header_seen = False
            continue
        if cur is None:
            continue
        a = _ATTR.match(line)
        if a:
            ln, flags, typ = int(a.group(1)), a.group(2), int(a.group(3))
            typ |= 0x8000 if flags[0] == "N" else 0
            cur.append(ln.to_bytes(2, "little") + typ.to_bytes(2, "little"))
            continue
        d = _DATA.match(line)
        if d:
            if "extra header" in line and not header_seen:
                header_seen = True  # the nfgenmsg: not part of the body
                continue
            cur.append(bytes.fromhex(d.group(1).replace(" ", "")))
    if cur is not None and mtype >> 8 == 10:
        out.append((mtype & 0xFF, b"".join(cur)))
    return out
