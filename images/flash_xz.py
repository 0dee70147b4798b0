"""``.xz`` images for ``image flash``: the decompressed size from the streams' indexes (so a
too-small target is refused before writing), and a reader that decompresses concatenated
streams with stream padding (which :class:`lzma.LZMAFile` refuses), checked by liblzma.
"""

from __future__ import annotations

import lzma
import os
import struct
import zlib
from typing import BinaryIO

#: Compressed bytes read at a time.
XZ_READ = 1024 * 1024
#: The magic number that starts every xz stream.
XZ_MAGIC = b"\xfd7zXZ\0"


def _xz_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        if pos >= len(buf):
            raise ValueError("index ends inside a number")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ValueError("number longer than 9 bytes in the index")


def xz_uncompressed_size(f: BinaryIO) -> int:
    """The decompressed size of an ``.xz`` file, from the index of each of its streams (the
    file is read from the end; nothing is decompressed). ``ValueError`` says what is wrong."""
    end = f.seek(0, os.SEEK_END)
    total = 0
    streams = 0
    while end > 0:
        # stream padding: zero bytes, in units of four, between and after streams
        f.seek(end - 4)
        if f.read(4) == b"\0\0\0\0":
            end -= 4
            continue
        if end < 24:
            raise ValueError(f"{end} bytes before offset {end} cannot hold an xz stream")
        f.seek(end - 12)
        footer = f.read(12)
        if footer[10:12] != b"YZ":
            raise ValueError(f"no xz stream footer at offset {end - 12} (truncated file?)")
        if zlib.crc32(footer[4:10]) != struct.unpack("<I", footer[0:4])[0]:
            raise ValueError(f"the stream footer at offset {end - 12} is corrupt")
        index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
        index_at = end - 12 - index_size
        if index_at < 12:
            raise ValueError(f"the stream index before offset {end - 12} is out of the file")
        f.seek(index_at)
        index = f.read(index_size)
        if index[0] != 0 or zlib.crc32(index[:-4]) != struct.unpack("<I", index[-4:])[0]:
            raise ValueError(f"the stream index at offset {index_at} is corrupt")
        count, pos = _xz_varint(index, 1)
        blocks = 0
        for _ in range(count):
            unpadded, pos = _xz_varint(index, pos)
            uncompressed, pos = _xz_varint(index, pos)
            blocks += (unpadded + 3) & ~3
            total += uncompressed
        start = index_at - blocks - 12
        f.seek(max(start, 0))
        if start < 0 or f.read(6) != XZ_MAGIC:
            raise ValueError(f"no xz stream header where the index at offset {index_at} says")
        streams += 1
        end = start
    if not streams:
        raise ValueError("no xz stream in the file")
    return total


class XzReader:
    """Decompresses an ``.xz`` file's streams one after the other, skipping stream padding
    (which :class:`lzma.LZMAFile` refuses); the integrity checks are liblzma's."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self._in = b""
        self._ended = False

    def _next_stream(self) -> bool:
        """After a stream's end: start the next one; ``False`` at the end of the file."""
        data = self._dec.unused_data + self._in
        while not data.strip(b"\0"):
            data = self._raw.read(XZ_READ)
            if not data:
                self._ended = True
                return False
        self._dec = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        self._in = data.lstrip(b"\0")
        return True

    def readinto(self, buf: memoryview) -> int:
        while not self._ended:
            if self._dec.eof and not self._next_stream():
                break
            if self._dec.needs_input:
                if not self._in:
                    self._in = self._raw.read(XZ_READ)
                    if not self._in:
                        raise lzma.LZMAError("the file ends inside an xz stream")
                data, self._in = self._in, b""
            else:
                data = b""
            out = self._dec.decompress(data, max_length=len(buf))
            if out:
                buf[: len(out)] = out
                return len(out)
        return 0
