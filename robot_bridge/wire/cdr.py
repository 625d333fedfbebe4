"""ROS 2's wire encoding of the message dataclasses: plain CDR (XCDR1), keyless.

A serialized message is a 4-byte encapsulation header (``00 01 00 00`` for
little-endian CDR) followed by the fields in declaration order. Primitives
are aligned to their size (at most 8) counted from the end of the header;
strings are a uint32 length including the terminating NUL, then the bytes
and the NUL; sequences are a uint32 count then the elements. These are the
bytes ``rmw_cyclonedds``, ``rmw_fastrtps``, rosbag2 and the ``rosbags``
library produce (the tests compare byte for byte).

Numeric sequences are copied in and out with numpy in one step, so an
image's ``uint8[]`` costs one memory copy rather than one Python call per
byte (cyclonedds-python's own ``sequence[uint8]`` does the latter).

>>> from omnipolicy.robot_bridge.wire.messages import Bool
>>> encode(Bool(data=True))
b'\\x00\\x01\\x00\\x00\\x01'
>>> decode(Bool, encode(Bool(data=True))).data
True
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from omnipolicy.robot_bridge.wire.messages import PRIMITIVES, RosMessage

M = TypeVar("M", bound=RosMessage)

#: Encapsulation headers (RTPS 10.5): representation id then two option bytes.
CDR_LE = b"\x00\x01\x00\x00"
CDR_BE = b"\x00\x00\x00\x00"

_STRUCT_CODE = {"bool": "?", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
                "int64": "q", "uint64": "Q", "float32": "f", "float64": "d"}


class CdrError(ValueError):
    """Bytes that are not a valid CDR encoding of the expected message type."""


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------

_Enc = Callable[[bytearray, Any], None]


def _pad(buf: bytearray, n: int) -> None:
    # alignment counts from the end of the 4-byte encapsulation header
    r = (len(buf) - 4) % n
    if r:
        buf += b"\0" * (n - r)


def _enc_primitive(kind: str) -> _Enc:
    st = struct.Struct("<" + _STRUCT_CODE[kind])
    size = st.size

    def enc(buf: bytearray, v: Any) -> None:
        _pad(buf, size)
        buf += st.pack(v)

    return enc


def _enc_string(buf: bytearray, v: str) -> None:
    b = v.encode("utf-8")
    _pad(buf, 4)
    buf += struct.pack("<I", len(b) + 1)
    buf += b
    buf += b"\0"


def _enc_primitive_seq(kind: str) -> _Enc:
    dtype = PRIMITIVES[kind].newbyteorder("<")
    size = dtype.itemsize

    def enc(buf: bytearray, v: np.ndarray) -> None:
        _pad(buf, 4)
        buf += struct.pack("<I", len(v))
        if len(v):
            _pad(buf, size)
            buf += memoryview(np.ascontiguousarray(v, dtype=dtype)).cast("B")

    return enc


def _enc_string_seq(buf: bytearray, v: tuple[str, ...]) -> None:
    _pad(buf, 4)
    buf += struct.pack("<I", len(v))
    for s in v:
        _enc_string(buf, s)


def _enc_message_seq(cls: type[RosMessage]) -> _Enc:
    def enc(buf: bytearray, v: tuple[RosMessage, ...]) -> None:
        _pad(buf, 4)
        buf += struct.pack("<I", len(v))
        item = _encoder(cls)
        for m in v:
            item(buf, m)

    return enc


_ENCODERS: dict[type, _Enc] = {}


def _encoder(cls: type[RosMessage]) -> _Enc:
    """The compiled encoder of a message class (fields in order)."""
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc
    plan: list[tuple[str, _Enc]] = []
    for f in cls.__ros_fields__:
        if isinstance(f.kind, type):
            plan.append((f.name, _enc_message_seq(f.kind) if f.seq else _nested_encoder(f.kind)))
        elif f.kind == "string":
            plan.append((f.name, _enc_string_seq if f.seq else _enc_string))
        else:
            plan.append((f.name, _enc_primitive_seq(f.kind) if f.seq else _enc_primitive(f.kind)))

    def enc(buf: bytearray, msg: Any) -> None:
        for name, fn in plan:
            fn(buf, getattr(msg, name))

    _ENCODERS[cls] = enc
    return enc


def _nested_encoder(cls: type[RosMessage]) -> _Enc:
    def enc(buf: bytearray, v: RosMessage) -> None:
        _encoder(cls)(buf, v)

    return enc


def encode(msg: RosMessage) -> bytes:
    """Serialize a message to little-endian CDR with its encapsulation header.

    Raises:
        CdrError: a value does not fit its ROS type (e.g. a negative uint32).
    """
    buf = bytearray(CDR_LE)
    try:
        _encoder(type(msg))(buf, msg)
    except (struct.error, OverflowError) as e:
        raise CdrError(f"{type(msg).ROS_TYPE}: a value does not fit its ROS type: {e}") from None
    return bytes(buf)


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


class _Reader:
    __slots__ = ("data", "pos", "end", "le")

    def __init__(self, data: bytes | memoryview, le: bool) -> None:
        self.data = data
        self.pos = 4
        self.end = len(data)
        self.le = le

    def align(self, n: int) -> None:
        r = (self.pos - 4) % n
        if r:
            self.pos += n - r

    def take(self, n: int) -> int:
        p = self.pos
        if p + n > self.end:
            raise CdrError(f"truncated message: need {n} bytes at offset {p}, have {self.end - p}")
        self.pos = p + n
        return p


_Dec = Callable[[_Reader], Any]


def _dec_primitive(kind: str) -> _Dec:
    le, be = struct.Struct("<" + _STRUCT_CODE[kind]), struct.Struct(">" + _STRUCT_CODE[kind])
    size = le.size

    def dec(r: _Reader) -> Any:
        r.align(size)
        p = r.take(size)
        return (le if r.le else be).unpack_from(r.data, p)[0]

    return dec


_U32_LE, _U32_BE = struct.Struct("<I"), struct.Struct(">I")


def _dec_u32(r: _Reader) -> int:
    r.align(4)
    p = r.take(4)
    return (_U32_LE if r.le else _U32_BE).unpack_from(r.data, p)[0]


def _dec_string(r: _Reader) -> str:
    n = _dec_u32(r)
    if n == 0:  # some writers send 0 for an empty string
        return ""
    p = r.take(n)
    if r.data[p + n - 1] != 0:
        raise CdrError(f"string at offset {p} is not NUL-terminated")
    try:
        return str(r.data[p : p + n - 1], "utf-8")
    except UnicodeDecodeError as e:
        raise CdrError(f"string at offset {p} is not UTF-8: {e}") from None


def _dec_primitive_seq(kind: str) -> _Dec:
    dle, dbe = PRIMITIVES[kind].newbyteorder("<"), PRIMITIVES[kind].newbyteorder(">")
    native = PRIMITIVES[kind]
    size = native.itemsize

    def dec(r: _Reader) -> np.ndarray:
        n = _dec_u32(r)
        if n == 0:
            return np.zeros(0, native)
        r.align(size)
        p = r.take(n * size)
        arr = np.frombuffer(r.data, dtype=dle if r.le else dbe, count=n, offset=p)
        return arr.astype(native, copy=True)  # own the memory: no view into the receive buffer

    return dec


def _dec_string_seq(r: _Reader) -> tuple[str, ...]:
    # _dec_string inlined: joint names are most of a JointState's decode time
    n = _dec_u32(r)
    if n > r.end - r.pos:
        raise CdrError(f"string sequence of {n} items cannot fit in {r.end - r.pos} bytes")
    data, pos, end = r.data, r.pos, r.end
    u32 = _U32_LE if r.le else _U32_BE
    out = []
    for _ in range(n):
        pos += -(pos - 4) % 4
        if pos + 4 > end:
            raise CdrError(f"truncated message: need 4 bytes at offset {pos}, have {end - pos}")
        (size,) = u32.unpack_from(data, pos)
        pos += 4
        stop = pos + size
        if stop > end:
            raise CdrError(f"truncated message: need {size} bytes at offset {pos}, have {end - pos}")
        if size == 0:
            out.append("")
            continue
        if data[stop - 1] != 0:
            raise CdrError(f"string at offset {pos} is not NUL-terminated")
        try:
            out.append(str(data[pos : stop - 1], "utf-8"))
        except UnicodeDecodeError as e:
            raise CdrError(f"string at offset {pos} is not UTF-8: {e}") from None
        pos = stop
    r.pos = pos
    return tuple(out)


def _dec_message_seq(cls: type[RosMessage]) -> _Dec:
    def dec(r: _Reader) -> tuple[RosMessage, ...]:
        n = _dec_u32(r)
        if n > r.end - r.pos:
            raise CdrError(f"{cls.__name__} sequence of {n} items cannot fit in {r.end - r.pos} bytes")
        item = _decoder(cls)
        return tuple(item(r) for _ in range(n))

    return dec


_DECODERS: dict[type, _Dec] = {}


def _decoder(cls: type[RosMessage]) -> _Dec:
    dec = _DECODERS.get(cls)
    if dec is not None:
        return dec
    plan: list[_Dec] = []
    for f in cls.__ros_fields__:
        if isinstance(f.kind, type):
            plan.append(_dec_message_seq(f.kind) if f.seq else _nested_decoder(f.kind))
        elif f.kind == "string":
            plan.append(_dec_string_seq if f.seq else _dec_string)
        else:
            plan.append(_dec_primitive_seq(f.kind) if f.seq else _dec_primitive(f.kind))

    names = [f.name for f in cls.__ros_fields__]

    def dec(r: _Reader) -> RosMessage:
        # the decoded values already have the field types: skip __post_init__'s coercion
        msg = object.__new__(cls)
        msg.__dict__.update(zip(names, [fn(r) for fn in plan]))
        return msg

    _DECODERS[cls] = dec
    return dec


def _nested_decoder(cls: type[RosMessage]) -> _Dec:
    def dec(r: _Reader) -> RosMessage:
        return _decoder(cls)(r)

    return dec


def decode(cls: type[M], data: bytes | bytearray | memoryview) -> M:
    """Deserialize CDR bytes (with encapsulation header, either endianness) into ``cls``.

    Trailing bytes (writers pad to a multiple of 4) are ignored.

    Raises:
        CdrError: unknown encapsulation, truncated or malformed data.
    """
    if len(data) < 4:
        raise CdrError(f"{cls.ROS_TYPE}: {len(data)} bytes is shorter than the 4-byte CDR header")
    head = bytes(data[:2])
    if head == CDR_LE[:2]:
        le = True
    elif head == CDR_BE[:2]:
        le = False
    else:
        raise CdrError(
            f"{cls.ROS_TYPE}: encapsulation {head.hex()} is not plain CDR (0001 little-endian or 0000 big-endian)"
        )
    r = _Reader(data, le)
    try:
        return _decoder(cls)(r)  # type: ignore[return-value]
    except CdrError as e:
        raise CdrError(f"{cls.ROS_TYPE}: {e}") from None
    except (TypeError, ValueError, struct.error) as e:
        raise CdrError(f"{cls.ROS_TYPE}: malformed message: {e}") from None
