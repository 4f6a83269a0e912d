"""A fast reader of classic pcap files (tcpdump -w) into a table of TCP packet headers.

The only Python loop walks the 16-byte record headers to find where each packet starts
(record lengths vary, so the next offset depends on the previous one); every field is then
gathered for all packets at once with numpy.
"""

from __future__ import annotations

import ipaddress
import struct
from array import array
from dataclasses import dataclass

import numpy as np
import pandas as pd

# link types: header length, offset of the ethertype-like protocol field (None: IP version nibble)
_LINKS: dict[int, tuple[int, int | None]] = {
    1: (14, 12),
    113: (16, 14),
    276: (20, 0),
    101: (0, None),
    228: (0, None),
    229: (0, None),
    0: (4, None),
}
_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04

COLUMNS = {
    "ts_ns": "int64",
    "saddr": "object",
    "sport": "int32",
    "daddr": "object",
    "dport": "int32",
    "seq": "int64",
    "ack": "int64",
    "flags": "int16",
    "payload": "int32",
    "wire_len": "int32",
    "ip_id": "int32",
}


class PcapError(ValueError):
    """Not a pcap file this reader understands."""


@dataclass
class Capture:
    packets: pd.DataFrame
    truncated: bool
    non_tcp: int


def empty_packets() -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in COLUMNS.items()})


def read_pcap(data: bytes) -> Capture:
    if len(data) < 24:
        raise PcapError("shorter than a pcap header")
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        raise PcapError("pcapng is not supported (capture with tcpdump -w, classic pcap)")
    if data[:4] not in _MAGIC:
        raise PcapError("not a pcap file (bad magic)")
    endian, ns_per_tick = _MAGIC[data[:4]]
    linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
    if linktype not in _LINKS:
        raise PcapError(f"link type {linktype} is not supported")
    offsets, truncated = _record_offsets(data, endian)
    if len(offsets) == 0:
        return Capture(empty_packets(), truncated, 0)
    packets, non_tcp = _decode(np.frombuffer(data, np.uint8), offsets, endian, ns_per_tick, linktype)
    return Capture(packets, truncated, non_tcp)


def _record_offsets(data: bytes, endian: str) -> tuple[np.ndarray, bool]:
    incl_len = struct.Struct(endian + "I").unpack_from
    offsets = array("q")
    position, size = 24, len(data)
    while position + 16 <= size:
        end = position + 16 + incl_len(data, position + 8)[0]
        if end > size:
            break
        offsets.append(position)
        position = end
    return np.frombuffer(offsets, np.int64) if offsets else np.empty(0, np.int64), position != size


def _be(buf: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    value = np.zeros(len(at), np.int64)
    for i in range(width):
        value = (value << 8) | buf[np.minimum(at + i, len(buf) - 1)].astype(np.int64)
    return value


class _Bytes:
    """Integers at many offsets of one buffer; reads past a packet's captured bytes are flagged in `bad`."""

    def __init__(self, buf: np.ndarray, limit: np.ndarray) -> None:
        self.buf, self.limit, self.bad = buf, limit, np.zeros(len(limit), bool)

    def u8(self, at: np.ndarray) -> np.ndarray:
        return self.be(at, 1)

    def be(self, at: np.ndarray, width: int) -> np.ndarray:
        self.bad |= at + width > self.limit
        return _be(self.buf, at, width)

    def le(self, at: np.ndarray, width: int) -> np.ndarray:
        value = self.be(at, width)
        return sum(((value >> (8 * i)) & 0xFF) << (8 * (width - 1 - i)) for i in range(width))


def _decode(
    buf: np.ndarray, offsets: np.ndarray, endian: str, ns_per_tick: int, linktype: int
) -> tuple[pd.DataFrame, int]:
    header = _Bytes(buf, np.full(len(offsets), len(buf)))
    word = header.le if endian == "<" else header.be
    ts_ns = word(offsets, 4) * 1_000_000_000 + word(offsets + 4, 4) * ns_per_tick
    incl, orig = word(offsets + 8, 4), word(offsets + 12, 4)
    start = offsets + 16
    b = _Bytes(buf, start + incl)
    l2_len, proto_at = _LINKS[linktype]
    ip = start + l2_len
    if linktype == 1:  # 802.1Q tags move the ethertype and the IP header
        tagged = b.be(start + 12, 2) == 0x8100
        ip = ip + 4 * tagged
    version = b.u8(ip) >> 4
    v4, v6 = version == 4, version == 6
    if proto_at is not None:
        ethertype = b.be(start + proto_at + 4 * (tagged if linktype == 1 else 0), 2)
        v4 &= ethertype == 0x0800
        v6 &= ethertype == 0x86DD
    ip_hdr = np.where(v4, (b.u8(ip) & 0x0F) * 4, 40)
    proto = np.where(v4, b.u8(ip + 9), b.u8(ip + 6))
    ip_total = np.where(v4, b.be(ip + 2, 2), 40 + b.be(ip + 4, 2))
    tcp = (v4 | v6) & (proto == 6)
    t = ip + ip_hdr
    bad_before = b.bad.copy()
    sport, dport = b.be(t, 2), b.be(t + 2, 2)
    seq, ack = b.be(t + 4, 4), b.be(t + 8, 4)
    doff, flags = (b.u8(t + 12) >> 4) * 4, b.u8(t + 13)
    keep = tcp & ~bad_before & ~b.bad
    saddr, daddr = _addresses(b, ip, v4, keep, 12, 8), _addresses(b, ip, v4, keep, 16, 24)
    frame = pd.DataFrame(
        {
            "ts_ns": ts_ns[keep],
            "saddr": saddr,
            "sport": sport[keep].astype(np.int32),
            "daddr": daddr,
            "dport": dport[keep].astype(np.int32),
            "seq": seq[keep],
            "ack": ack[keep],
            "flags": flags[keep].astype(np.int16),
            "payload": (ip_total - ip_hdr - doff)[keep].astype(np.int32),
            "wire_len": orig[keep].astype(np.int32),
            "ip_id": np.where(v4, b.be(ip + 4, 2), -1)[keep].astype(np.int32),
        }
    )
    return frame, int((~keep).sum())


def _addresses(b: _Bytes, ip: np.ndarray, v4: np.ndarray, keep: np.ndarray, at4: int, at6: int) -> np.ndarray:
    """Address strings of the kept packets, formatted once per distinct address."""
    ip, v4 = ip[keep], v4[keep]
    out = np.empty(len(ip), object)
    if v4.any():
        codes = _be(b.buf, ip[v4] + at4, 4)
        uniques, inverse = np.unique(codes, return_inverse=True)
        out[v4] = np.array([str(ipaddress.IPv4Address(int(u))) for u in uniques], object)[inverse]
    if (~v4).any():
        raw = b.buf[(ip[~v4] + at6)[:, None] + np.arange(16)]
        uniques, inverse = np.unique(np.ascontiguousarray(raw).view("V16").ravel(), return_inverse=True)
        out[~v4] = np.array([_v6(bytes(u)) for u in uniques], object)[inverse.ravel()]
    return out


def _v6(raw: bytes) -> str:
    address = ipaddress.IPv6Address(raw)
    return str(address.ipv4_mapped or address)
