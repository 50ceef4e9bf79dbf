"""The duration of an uploaded audio file, read as new-api's ffprobe reads it (its format
duration), and nothing but a duration or None from any bytes a caller can send.

The files under tests/fixtures/audio are silence made by ffmpeg 5.1 (8 kHz mono, 2.3 s;
the Matroska and moov-last MP4 ones 44.1 kHz stereo, 7.77 s); each expected value is the
``format=duration`` ffprobe printed for that file."""

from __future__ import annotations

import io
import wave
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.metering.audio_length import seconds
from gateway.metering.forms import read_form

AUDIO = Path(__file__).parent.parent / "fixtures" / "audio"
FFPROBE = {
    "silence.flac": "2.300000",
    "silence.m4a": "2.300000",
    "silence-xing.mp3": "2.448000",
    "silence-cbr.mp3": "2.448000",
    "silence-vorbis.ogg": "2.300000",
    "silence-opus.ogg": "2.306500",  # Opus's pre-skip included, as ffprobe does
    "silence.webm": "2.308000",
    "silence.mkv": "7.773000",
    "silence-moov-last.mp4": "7.770000",
}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wav(frames: int, rate: int, width: int, channels: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\0" * frames * width * channels)
    return out.getvalue()


@pytest.mark.parametrize("name", sorted(FFPROBE))
def test_each_container_reads_as_ffprobe_reads_it(name: str) -> None:
    assert seconds((AUDIO / name).read_bytes()) == Fraction(FFPROBE[name])


@pytest.mark.parametrize(
    ("frames", "rate", "width", "channels"),
    [(18_400, 8_000, 2, 1), (44_100 * 3 + 7, 44_100, 2, 2), (1, 16_000, 3, 1), (480, 48_000, 1, 6)],
)
def test_a_wav_lasts_its_frames_over_its_rate(
    frames: int, rate: int, width: int, channels: int
) -> None:
    assert seconds(wav(frames, rate, width, channels)) == Fraction(frames, rate)


def test_a_wav_whose_data_size_runs_past_the_file_is_read_to_its_end() -> None:
    data = wav(8_000, 8_000, 2, 1)
    cut = data[: len(data) - 4_000]  # a streamed upload whose header promised more
    assert seconds(cut) == Fraction(6_000, 8_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"ID3" + b"\0" * 2000,  # a tag and no audio
        b"RIFF\0\0\0\0WAVE",  # no chunks
        b"fLaC" + b"\0" * 40,  # total samples unknown
        b"OggS" + b"\0" * 60,  # no codec this reads
        b"\0\0\0\x08ftyp" + b"\0" * 100,  # no moov
        b"\x1a\x45\xdf\xa3\x80",  # an EBML header and nothing after it
        b"\xff\xfb" + b"\0" * 50,  # one frame header, no second frame where it should be
    ],
)
def test_files_that_do_not_say_their_duration_read_as_none(data: bytes) -> None:
    assert seconds(data) is None


@pytest.mark.parametrize("name", sorted(FFPROBE))
@FUZZ
@given(data=st.data())
def test_no_cut_or_changed_file_makes_it_raise(name: str, data: st.DataObject) -> None:
    raw = bytearray((AUDIO / name).read_bytes())
    raw = raw[: data.draw(st.integers(0, len(raw)), label="cut")]
    for _ in range(data.draw(st.integers(0, 8), label="changes")):
        if raw:
            at = data.draw(st.integers(0, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
    got = seconds(bytes(raw))
    assert got is None or (isinstance(got, Fraction) and got > 0)


@FUZZ
@given(
    head=st.sampled_from([b"RIFF", b"fLaC", b"OggS", b"ID3\x04", b"\x1a\x45\xdf\xa3", b"\xff\xfb"]),
    rest=st.binary(max_size=4096),
)
def test_no_bytes_behind_a_known_magic_make_it_raise(head: bytes, rest: bytes) -> None:
    got = seconds(head + rest)
    assert got is None or (isinstance(got, Fraction) and got > 0)


def test_the_form_keeps_the_upload_as_a_view_of_the_body() -> None:
    audio = (AUDIO / "silence-xing.mp3").read_bytes()
    # Bytes that look like the start of a boundary inside the file do not cut it short.
    upload = b"\r\n--" * 100 + audio
    body = (
        b'--bb\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--bb\r\nContent-Disposition: form-data; name="file"; filename="a.mp3"\r\n'
        b"Content-Type: audio/mpeg\r\n\r\n" + upload + b"\r\n--bb--\r\n"
    )
    form = read_form(body, "multipart/form-data; boundary=bb", file_field="file")
    assert form.fields == {"model": "whisper-1"}
    assert form.file is not None
    assert bytes(form.file) == upload


def test_a_form_with_two_parts_of_the_name_keeps_neither() -> None:
    part = b'--bb\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxyz\r\n'
    body = part + part + b"--bb--\r\n"
    assert read_form(body, "multipart/form-data; boundary=bb", file_field="file").file is None
