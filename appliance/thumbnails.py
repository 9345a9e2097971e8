"""WebP thumbnails, made from the camera's small frame, or from the JPEG at reduced size.

A 12 MP JPEG is never fully decoded for a thumbnail: :func:`from_jpeg` asks libjpeg for a DCT-scaled
decode (``Image.draft``: 1/2, 1/4 or 1/8 of full size, the smallest still at least the target), which
is several times faster and smaller in memory than a full decode.  EXIF orientation is honoured.
"""

import io

from PIL import Image, ImageOps

WEBP_QUALITY = 80
# libwebp's effort 0..6; Pillow's default is 4.  At 320 px the visual difference is nil, and 0 costs a
# fraction of the time on a Pi's CPU.
WEBP_METHOD = 0


def _encode(image: Image.Image, thumbnail_max_px: int) -> bytes:
    image.thumbnail((thumbnail_max_px, thumbnail_max_px), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)
    return out.getvalue()


def from_frame(frame: Image.Image, thumbnail_max_px: int) -> bytes:
    """Encode an upright camera frame (any Pillow mode) as a WebP no larger than
    ``thumbnail_max_px`` on its longest edge.  Never upscales.  Returns the WebP bytes."""
    return _encode(frame.convert("RGB"), thumbnail_max_px)


def from_jpeg(jpeg: bytes, thumbnail_max_px: int, *, upright: bool = True) -> bytes:
    """Encode the JPEG ``jpeg`` as a WebP no larger than ``thumbnail_max_px`` on its longest
    edge, turned upright by its EXIF orientation (``upright=False``: as stored, for a photo whose
    EXIF cannot be read).

    Raises ``OSError`` (Pillow's ``UnidentifiedImageError`` included) or ``ValueError`` when the
    bytes are not a decodable image.
    """
    with Image.open(io.BytesIO(jpeg)) as image:
        # Draft to the square box so a photo rotated by its EXIF orientation is still large enough.
        image.draft("RGB", (thumbnail_max_px, thumbnail_max_px))
        frame = (ImageOps.exif_transpose(image) if upright else image).convert("RGB")
    return _encode(frame, thumbnail_max_px)


def make(jpeg: bytes, frame: Image.Image | None, thumbnail_max_px: int) -> bytes:
    """The thumbnail of a capture: from ``frame`` when it is large enough for
    ``thumbnail_max_px``, else from ``jpeg``.  Errors as :func:`from_jpeg`."""
    if frame is not None and max(frame.size) >= thumbnail_max_px:
        return from_frame(frame, thumbnail_max_px)
    return from_jpeg(jpeg, thumbnail_max_px)
