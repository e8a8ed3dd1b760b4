"""Raw NETLINK_NETFILTER requests: the nf_tables generation id and table names, and nfacct counters.

Three small questions are cheaper to ask the kernel directly than through
a tool: which generation the nf_tables ruleset of a namespace is at (the
kernel bumps it on every committed change, by anyone, so apply caches can
prove themselves fresh), which nf_tables tables a family holds (which
iptables backend a namespace uses), and creating the nfacct counters
kube-proxy's rules count into. Each request goes over one socket made
inside the namespace (`netns.netlink_socket_in`); replies are parsed here, so
the callers never see netlink framing.
"""

from __future__ import annotations

import os
import socket
import struct

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ACCT = 7
NFNL_MSG_ACCT_NEW = 0
NFACCT_NAME = 1
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETTABLE, NFT_MSG_GETGEN = 1, 16
NFTA_TABLE_NAME, NFTA_GEN_ID = 1, 1
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP, NLM_F_CREATE = 0x1, 0x4, 0x300, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3
NFPROTO = {4: 2, 6: 10}  # NFPROTO_IPV4, NFPROTO_IPV6


class NlAckError(OSError):
    """The error a netlink ack carries (the socket's own errors stay plain OSError)."""


def netfilter_socket() -> socket.socket:
    """A NETLINK_NETFILTER socket in the calling thread's namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)


def nfgen(family: int) -> bytes:
    return struct.pack("BBH", family, 0, 0)  # nfgenmsg: family, version 0, res_id


def nl_request(sock: socket.socket, msg_type: int, flags: int, body: bytes, seq: int) -> list[tuple[int, bytes]]:
    """Send one netfilter request; return (type, payload after nfgenmsg) of every reply until done."""
    sock.send(struct.pack("IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body)
    out: list[tuple[int, bytes]] = []
    while True:
        data = sock.recv(1 << 20)
        off = 0
        while off + 16 <= len(data):
            ln, typ, fl, sq, _ = struct.unpack_from("IHHII", data, off)
            if ln < 16:
                return out
            if typ == NLMSG_DONE:
                return out
            if typ == NLMSG_ERROR:
                (err,) = struct.unpack_from("i", data, off + 16)
                if err:
                    raise NlAckError(-err, os.strerror(-err))
                return out
            out.append((typ, data[off + 20:off + ln]))
            if not fl & 0x2:  # NLM_F_MULTI unset: a single answer
                return out
            off += (ln + 3) & ~3


def nl_attrs(payload: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(payload):
        alen, atype = struct.unpack_from("HH", payload, off)
        if alen < 4:
            break
        attrs[atype & 0x3FFF] = payload[off + 4:off + alen]
        off += (alen + 3) & ~3
    return attrs


def nft_genid(sock: socket.socket) -> int | None:
    """The nf_tables ruleset generation of the socket's namespace (None: no nf_tables)."""
    try:
        replies = nl_request(sock, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, 0, nfgen(socket.AF_UNSPEC), 1)
    except OSError:
        return None  # no nf_tables in this kernel
    for _, payload in replies:
        v = nl_attrs(payload).get(NFTA_GEN_ID)
        if v is not None and len(v) == 4:
            return struct.unpack(">I", v)[0]
    return None


def nft_tables(sock: socket.socket, family: int) -> frozenset[str]:
    """Names of the nf_tables tables of FAMILY (4: ip, 6: ip6) in the socket's namespace."""
    try:
        replies = nl_request(sock, (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE, NLM_F_DUMP,
                             nfgen(NFPROTO[family]), 2)
    except OSError:
        return frozenset()
    names = set()
    for _, payload in replies:
        v = nl_attrs(payload).get(NFTA_TABLE_NAME)
        if v:
            names.add(v.rstrip(b"\0").decode(errors="replace"))
    return frozenset(names)


def nfacct_new(sock: socket.socket, counter: str, seq: int) -> int:
    """Send NFNL_MSG_ACCT_NEW for COUNTER; return the positive errno of the ack (0 = created)."""
    name = counter.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(name), NFACCT_NAME) + name
    attr += b"\0" * (-len(attr) % 4)
    try:
        nl_request(sock, (NFNL_SUBSYS_ACCT << 8) | NFNL_MSG_ACCT_NEW, NLM_F_ACK | NLM_F_CREATE,
                   nfgen(socket.AF_UNSPEC) + attr, seq)
    except NlAckError as e:
        return e.errno
    return 0
