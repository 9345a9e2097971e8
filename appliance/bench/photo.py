"""The photo the capture path is measured with: a synthetic one that weighs what a camera's photo
of that size does, and the shot a simulated camera makes of it.
"""

import io
from pathlib import Path

from PIL import Image

from appliance.bench import plan
from appliance.exc import ApplianceError
from hw.camera import SimulatedCamera
from hw.exc import CameraError


def synthetic_photo(size_px: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """A JPEG of ``size_px`` (default :data:`plan.SYNTHETIC_SIZE_PX`) at ``quality`` whose texture
    (smoothed noise over gradients) makes it weigh about what a camera's photo of that size does
    (4.6 MB at 12.3 MP): a flat synthetic scene would compress to a fraction of it and flatter every
    figure that writes it."""
    size_px = tuple(size_px or plan.SYNTHETIC_SIZE_PX)
    width, height = size_px
    noise = Image.effect_noise((width // 2, height // 2), 40).resize(size_px, Image.Resampling.BILINEAR)
    ramp = Image.linear_gradient("L").resize(size_px)
    image = Image.merge("RGB", (Image.blend(noise, ramp, 0.5), noise, Image.blend(ramp, noise, 0.7)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _replay_shot(photo_dir: Path, lores_size_px: tuple[int, int]):
    """The :class:`~hw.camera.Shot` a simulated camera makes of the one photo in ``photo_dir``:
    the JPEG as it is, and the small frame the thumbnail is made from."""
    try:
        return SimulatedCamera(replay_dir=photo_dir, lores_size_px=lores_size_px).capture(timeout_s=60)
    except CameraError as exc:
        raise ApplianceError(f"bench: the photo cannot be used: {exc}") from exc
