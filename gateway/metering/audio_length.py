"""How long an uploaded audio file plays, read from its own headers (pure).

new-api bills a transcription by the duration ffprobe reads from the upload, whatever format
the answer comes in; whisper's ``text``, ``srt`` and ``vtt`` answers do not say it. This reads
the same figure from the containers the transcription API takes: WAV, FLAC, MP3 (a Xing/Info
or VBRI header, else its bit rate), Ogg (Vorbis, Opus), MP4/M4A and WebM/Matroska. Like
ffprobe's format duration, Opus's pre-skip and an MP3's encoder padding are included.

Anything it cannot read for certain is None (the call is then charged its estimate): the
bytes are the caller's, so every read is bounds-checked and every loop bounded, and nothing
here raises on any input.
"""

from __future__ import annotations

import struct
from fractions import Fraction

_MAX_BOXES = 4096  # MP4 boxes or Matroska elements walked before giving up
_OGG_TAIL = 65_307 + 27  # the largest Ogg page: its last one starts within this of the end


def seconds(data: bytes | memoryview | None) -> Fraction | None:
    """The file's duration in seconds, or None when it cannot be read (unknown format, no
    duration in its headers, or headers that contradict themselves)."""
    if not data:
        return None
    raw = bytes(data[:12])
    try:
        if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
            found = _wav(data)
        elif raw[:4] == b"fLaC" or (raw[:3] == b"ID3" and _after_id3(data)[1] == b"fLaC"):
            found = _flac(data)
        elif raw[:4] == b"OggS":
            found = _ogg(data)
        elif raw[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
            found = _mp4(data)
        elif raw[:4] == b"\x1a\x45\xdf\xa3":
            found = _matroska(data)
        else:
            found = _mp3(data)
    except (struct.error, IndexError, ValueError, OverflowError, ZeroDivisionError):
        return None
    return found if found is not None and found > 0 else None


def _after_id3(data: bytes | memoryview) -> tuple[int, bytes]:
    """Where the bytes after a leading ID3v2 tag start, and their first four."""
    start = 0
    if bytes(data[:3]) == b"ID3" and len(data) >= 10:
        size = 0
        for b in bytes(data[6:10]):
            size = (size << 7) | (b & 0x7F)
        start = 10 + size + (10 if data[5] & 0x10 else 0)
    return start, bytes(data[start : start + 4])


def _wav(data: bytes | memoryview) -> Fraction | None:
    pos, byte_rate = 12, 0
    for _ in range(_MAX_BOXES):
        if pos + 8 > len(data):
            return None
        cid = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if cid == b"fmt ":
            (byte_rate,) = struct.unpack_from("<I", data, pos + 8 + 8)
        elif cid == b"data":
            if not byte_rate:
                return None
            # A streamed WAV leaves the size 0 or all ones: the rest of the file is its data.
            held = len(data) - pos - 8
            if size in (0, 0xFFFFFFFF) or size > held:
                size = held
            return Fraction(size, byte_rate)
        pos += 8 + size + (size & 1)
    return None


def _flac(data: bytes | memoryview) -> Fraction | None:
    pos, magic = _after_id3(data)
    if magic != b"fLaC":
        return None
    pos += 4
    if data[pos] & 0x7F != 0:  # STREAMINFO must come first
        return None
    info = bytes(data[pos + 4 + 10 : pos + 4 + 18])
    if len(info) < 8:
        return None
    bits = int.from_bytes(info, "big")
    rate = bits >> 44
    total = bits & ((1 << 36) - 1)
    if not rate or not total:  # total 0: the encoder did not know it
        return None
    return Fraction(total, rate)


# MPEG audio: bit rates (kbit/s) by (MPEG-1?, layer) and index; sample rates by version.
_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_SYNC_SEARCH = 64 * 1024  # how far past the tags a first frame may start


def _frame(data: bytes | memoryview, pos: int) -> tuple[int, int, int, int, bool, bool] | None:
    """The MPEG audio frame header at ``pos``: its length in bytes, bit rate (bit/s), sample
    rate, samples per frame, MPEG-1, mono; None when it is not one."""
    if pos + 4 > len(data):
        return None
    (h,) = struct.unpack_from(">I", data, pos)
    if h >> 21 != 0x7FF:
        return None
    version, layer_bits = (h >> 19) & 3, (h >> 17) & 3
    br_index, sr_index = (h >> 12) & 0xF, (h >> 10) & 3
    if version == 1 or layer_bits == 0 or br_index in (0, 15) or sr_index == 3:
        return None
    layer, mpeg1 = 4 - layer_bits, version == 3
    bitrate = _BITRATES[(mpeg1, layer if mpeg1 or layer == 1 else 2)][br_index] * 1000
    rate = _RATES[version][sr_index]
    pad = (h >> 9) & 1
    if layer == 1:
        return (12 * bitrate // rate + pad) * 4, bitrate, rate, 384, mpeg1, (h >> 6) & 3 == 3
    per = 1152 if layer == 2 or mpeg1 else 576
    length = per // 8 * bitrate // rate + pad
    return length, bitrate, rate, per, mpeg1, (h >> 6) & 3 == 3


def _mp3(data: bytes | memoryview) -> Fraction | None:
    start, _ = _after_id3(data)
    found = None
    for pos in range(start, min(len(data) - 4, start + _SYNC_SEARCH)):
        if data[pos] != 0xFF:
            continue
        head = _frame(data, pos)
        # A false sync inside a tag or junk: the next frame must follow where this one ends.
        if head is not None and head[0] > 4 and _frame(data, pos + head[0]) is not None:
            found = pos, head
            break
    if found is None:
        return None
    pos, (_, bitrate, rate, per, mpeg1, mono) = found
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    tag = pos + 4 + side
    if bytes(data[tag : tag + 4]) in (b"Xing", b"Info"):
        (flags,) = struct.unpack_from(">I", data, tag + 4)
        if flags & 1:
            (frames,) = struct.unpack_from(">I", data, tag + 8)
            return Fraction(frames * per, rate) if frames else None
    if bytes(data[pos + 36 : pos + 40]) == b"VBRI":
        (frames,) = struct.unpack_from(">I", data, pos + 36 + 14)
        return Fraction(frames * per, rate) if frames else None
    # No table of frames: a constant bit rate over the rest of the file (less an ID3v1 tag).
    end = len(data) - (128 if bytes(data[-128:-125]) == b"TAG" else 0)
    return Fraction((end - pos) * 8, bitrate)


def _ogg(data: bytes | memoryview) -> Fraction | None:
    (serial,) = struct.unpack_from("<I", data, 14)
    nsegs = data[26]
    packet = bytes(data[27 + nsegs : 27 + nsegs + 19])
    if packet[:7] == b"\x01vorbis":
        (rate,) = struct.unpack_from("<I", packet, 12)
    elif packet[:8] == b"OpusHead":
        rate = 48_000  # Opus's granule counts at 48 kHz whatever the input rate was
    else:
        return None
    tail = bytes(data[-_OGG_TAIL:])
    at = len(tail)
    for _ in range(_MAX_BOXES):
        at = tail.rfind(b"OggS", 0, at)
        if at < 0 or at + 27 > len(tail):
            return None
        (granule, page_serial) = struct.unpack_from("<qI", tail, at + 6)
        if page_serial == serial and granule > 0:
            return Fraction(granule, rate) if rate else None
    return None


def _boxes(data: bytes | memoryview, pos: int, end: int) -> list[tuple[bytes, int, int]]:
    """The MP4 boxes between ``pos`` and ``end``: type, start of the content, end."""
    out: list[tuple[bytes, int, int]] = []
    while pos + 8 <= end and len(out) < _MAX_BOXES:
        (size,) = struct.unpack_from(">I", data, pos)
        kind = bytes(data[pos + 4 : pos + 8])
        head = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head:
            break
        out.append((kind, pos + head, min(pos + size, end)))
        pos += size
    return out


def _mp4(data: bytes | memoryview) -> Fraction | None:
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for inner, body, _ in _boxes(data, start, end):
            if inner != b"mvhd":
                continue
            if data[body] == 1:
                scale, duration = struct.unpack_from(">IQ", data, body + 20)
            else:
                scale, duration = struct.unpack_from(">II", data, body + 12)
            if not scale or duration in (0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
                return None
            return Fraction(duration, scale)
    return None


def _vint(data: bytes | memoryview, pos: int, *, keep_marker: bool) -> tuple[int, int]:
    """A Matroska variable-length integer at ``pos``: its value (-1 for an unknown size) and
    where the next field starts."""
    first = data[pos]
    width = 1
    while width <= 8 and not first & (0x80 >> (width - 1)):
        width += 1
    if width > 8:
        raise ValueError("not a variable-length integer")
    value = first if keep_marker else first & (0xFF >> width)
    for b in bytes(data[pos + 1 : pos + width]):
        value = (value << 8) | b
    if not keep_marker and value == (1 << (7 * width)) - 1:
        value = -1
    return value, pos + width


_SEGMENT, _INFO, _SCALE, _DURATION = 0x18538067, 0x1549A966, 0x2AD7B1, 0x4489
_CLUSTER = 0x1F43B675


def _element(data: bytes | memoryview, pos: int) -> tuple[int, int, int]:
    """A Matroska element at ``pos``: its id, size (-1 unknown) and where its content starts."""
    eid, pos = _vint(data, pos, keep_marker=True)
    size, pos = _vint(data, pos, keep_marker=False)
    return eid, size, pos


def _matroska(data: bytes | memoryview) -> Fraction | None:
    pos = 0
    for _ in range(_MAX_BOXES):
        if pos >= len(data):
            return None
        eid, size, pos = _element(data, pos)
        if eid == _SEGMENT:
            continue  # its children follow
        if eid == _INFO:
            return _info_duration(data, pos, len(data) if size < 0 else pos + size)
        if eid == _CLUSTER or size < 0:
            return None  # the audio itself began, and no Info came before it
        pos += size
    return None


def _info_duration(data: bytes | memoryview, pos: int, end: int) -> Fraction | None:
    """The Duration of an Info element (in ticks of its TimecodeScale, in nanoseconds,
    1,000,000 when absent)."""
    scale, duration = 1_000_000, None
    for _ in range(_MAX_BOXES):
        if pos >= min(end, len(data)):
            break
        eid, size, pos = _element(data, pos)
        if size < 0:
            break
        if eid == _SCALE and 0 < size <= 8:
            scale = int.from_bytes(bytes(data[pos : pos + size]), "big")
        elif eid == _DURATION and size in (4, 8):
            (duration,) = struct.unpack_from(">f" if size == 4 else ">d", data, pos)
        pos += size
    if duration is None or not duration > 0 or duration == float("inf") or not scale:
        return None
    return Fraction(duration) * scale / 1_000_000_000
