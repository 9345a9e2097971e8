import datetime
import io
import time

import pytest
from PIL import ExifTags, Image

from appliance import exif

WHEN = datetime.datetime(2026, 6, 1, 21, 0, 5, 250000, tzinfo=datetime.UTC)
PI = exif.Identity("Raspberry Pi", "imx708", "SN-0042")
PLUS_ONE = datetime.timezone(datetime.timedelta(hours=1))


def jpeg(size=(64, 48), **save_args) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "JPEG", **save_args)
    return out.getvalue()


def read_exif(data: bytes) -> dict:
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # the image data are intact
        tags = image.getexif()
        names = {**tags, **tags.get_ifd(ExifTags.IFD.Exif)}
    return {ExifTags.TAGS.get(k, k): v for k, v in names.items()}


def test_embed_writes_time_with_offset_identity_and_exposure(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Amsterdam")  # UTC+2 in June
    time.tzset()
    try:
        fields = exif.describe(WHEN, PI, {"ExposureTime": 8000, "AnalogueGain": 2.5, "DigitalGain": 1.0})
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    tags = read_exif(exif.embed(jpeg(), fields))
    assert tags["DateTimeOriginal"] == "2026:06:01 23:00:05"
    assert tags["OffsetTimeOriginal"] == "+02:00"
    assert tags["SubsecTimeOriginal"] == "250"
    assert (tags["Make"], tags["Model"], tags["BodySerialNumber"]) == ("Raspberry Pi", "imx708", "SN-0042")
    assert tags["ExposureTime"] == pytest.approx(0.008)
    assert tags["ISOSpeedRatings"] == 250
    assert tags["Software"].startswith("camtrap-appliance ")


def test_embed_keeps_the_image_data_and_replaces_an_existing_exif():
    original = jpeg()
    # picamera2 splices its own Exif segment straight after SOI, before JFIF's APP0.
    theirs = Image.Exif()
    theirs[ExifTags.Base.Make] = "Picamera2"
    block = theirs.tobytes()
    spliced = original[:2] + b"\xff\xe1" + (len(block) + 2).to_bytes(2, "big") + block + original[2:]

    tagged = exif.embed(spliced, exif.describe(WHEN, PI))

    assert tagged.count(b"Exif\x00\x00") == 1 and read_exif(tagged)["Make"] == "Raspberry Pi"
    assert tagged.endswith(original[original.index(b"\xff\xdb") :])  # compressed data untouched
    assert exif.embed(tagged, exif.describe(WHEN, PI)) == tagged  # idempotent


def test_camera_metadata_missing_leaves_its_tags_out():
    fields = exif.describe(WHEN, exif.Identity("Raspberry Pi", "simulated"), {"Simulated": True})
    assert not {"ExposureTime", "ISOSpeedRatings", "BodySerialNumber"} & fields.keys()


@pytest.mark.parametrize("data", [b"", b"GIF89a", b"\xff\xd8\xff\xe0\x40\x00JFIF"])
def test_not_a_jpeg_or_a_truncated_header_is_a_value_error(data):
    with pytest.raises(ValueError, match="not a JPEG"):
        exif.embed(data, exif.describe(WHEN, PI))


@pytest.mark.parametrize(
    ("fields", "assume", "expected"),
    [
        ({"DateTimeOriginal": "2022:08:14 14:12:31", "OffsetTimeOriginal": "+03:00",
          "SubsecTimeOriginal": "25"}, None, "2022-08-14T14:12:31.250000+03:00"),
        ({"DateTimeOriginal": "2022:08:14 14:12:31"}, None, None),  # ambiguous
        ({"DateTimeOriginal": "2022:08:14 14:12:31"}, PLUS_ONE, "2022-08-14T14:12:31+01:00"),
        # An offset that does not parse counts as none.
        ({"DateTimeOriginal": "2022:08:14 14:12:31", "OffsetTimeOriginal": "  :  "}, None, None),
        ({"DateTimeOriginal": "2022:08:14 14:12:31", "OffsetTimeOriginal": "  :  "}, PLUS_ONE,
         "2022-08-14T14:12:31+01:00"),
        ({"DateTimeOriginal": "0000:00:00 00:00:00"}, PLUS_ONE, None),  # never set
        ({"DateTimeOriginal": "2022:08:14 14:12:31", "SubsecTimeOriginal": "x"}, PLUS_ONE,
         "2022-08-14T14:12:31+01:00"),
        ({"DateTimeOriginal": 20220814}, PLUS_ONE, None),
    ],
)  # fmt: skip
def test_original_time(fields, assume, expected):
    moment = exif.original_time(fields, assume)
    assert (moment.isoformat() if moment else None) == expected
