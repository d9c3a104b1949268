"""Files the fakes send and check, written and read byte by byte: a PNG picture and an OGG/Opus recording."""

from __future__ import annotations

import struct
import zlib


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_picture(width: int, height: int, *, padding: int = 0) -> bytes:
    """A valid RGB PNG of one colour; `padding` bytes in a private chunk make the file larger, not the picture."""
    row = b"\x00" + bytes((70, 130, 180)) * width
    packer = zlib.compressobj(6)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    extra = _png_chunk(b"jaRv", bytes(padding)) if padding else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def png_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, read from its header; None for anything else."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, flags: int, granule: int, sequence: int, serial: int = 0x4A415256) -> bytes:
    lacing = b""
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = b"OggS" + struct.pack("<BBqIIIB", 0, flags, granule, serial, sequence, 0, len(lacing)) + lacing
    page = header + b"".join(packets)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_opus_silence(seconds: float = 1.0) -> bytes:
    """A valid OGG/Opus file of `seconds` of silence: the Opus head and tags, then 20 ms silent frames."""
    pre_skip = 312
    frames = max(int(seconds * 50), 1)
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, pre_skip, 48000, 0, 0)
    vendor = b"jarvis-fake"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    # TOC 0xF8: CELT full band, 20 ms, mono, one frame; 0xFF 0xFE is the frame of silence.
    silence = [b"\xf8\xff\xfe"] * frames
    pages = [_ogg_page([head], flags=0x02, granule=0, sequence=0), _ogg_page([tags], flags=0, granule=0, sequence=1)]
    for index in range(0, frames, 200):
        chunk = silence[index : index + 200]
        last = index + 200 >= frames
        granule = pre_skip + (index + len(chunk)) * 960
        pages.append(_ogg_page(chunk, flags=0x04 if last else 0, granule=granule, sequence=2 + index // 200))
    return b"".join(pages)
