import io

import pytest
from PIL import Image

from appliance import thumbnails


def webp_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP"
        return image.size


def test_12mp_jpeg_gives_a_320px_webp_without_a_full_decode(samples, monkeypatch):
    jpeg = (samples / "full-res" / "olympus_e-p3_12mp.jpg").read_bytes()
    decoded_sizes = []
    original_load = Image.Image.load

    def recording_load(image):
        decoded_sizes.append(image.size)
        return original_load(image)

    monkeypatch.setattr(Image.Image, "load", recording_load)
    webp = thumbnails.from_jpeg(jpeg, 320)

    assert webp_size(webp) == (320, 240)
    # libjpeg's DCT scaling decodes at 1/8 here (504x378), never 4032x3024.
    assert max(w for w, _ in decoded_sizes) < 4032 // 4


def test_exif_orientation_is_honoured(photo):
    with Image.open(io.BytesIO(photo)) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # rotate 90° clockwise to view
        rotated = io.BytesIO()
        image.save(rotated, "JPEG", exif=exif.tobytes())
    assert webp_size(thumbnails.from_jpeg(rotated.getvalue(), 320)) == (225, 320)


def test_frame_is_used_when_large_enough_and_never_upscaled():
    frame = Image.new("RGB", (320, 240), (10, 200, 30))
    assert webp_size(thumbnails.make(b"not a jpeg", frame, 320)) == (320, 240)
    assert webp_size(thumbnails.from_frame(Image.new("L", (100, 50)), 320)) == (100, 50)


def test_small_frame_falls_back_to_the_jpeg(photo):
    frame = Image.new("RGB", (160, 120))
    assert webp_size(thumbnails.make(photo, frame, 320)) == (320, 225)


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_corrupt_jpeg_raises_os_error(photo, data):
    truncated = photo[: len(photo) // 3] if data is None else data
    with pytest.raises(OSError):
        thumbnails.from_jpeg(truncated, 320)
