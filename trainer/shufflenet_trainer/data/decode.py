"""Host decoding with Pillow: one uint8 HWC array per sample, little work per image.

- JPEG: ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain when
  the crop is much larger than the output, so most of the pixels are never produced.
- Only the crop box is resampled (``Image.resize(box=...)``): no full-size resize, no crop copy.
- Grayscale is resampled as one channel and expanded to RGB at the end (exact); other modes
  (CMYK, palette, alpha, 16-bit) are converted to RGB first, as ``Image.convert('RGB')`` in
  the reference loader does.
- No float work on the host: uint8 end to end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as _tv_decode_jpeg

from .transforms import TrainParams, draft_scale, val_source_box

# Modes that resample the same per channel as after convert('RGB'), so the conversion can
# wait until the image is small.
_LATE_CONVERT = ("RGB", "L")


def _prepare(
    im: Image.Image, box: tuple[float, float, float, float], out_w: int, out_h: int, use_draft: bool
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    if use_draft and im.format == "JPEG":
        s = draft_scale(box[2] - box[0], box[3] - box[1], out_w, out_h)
        if s > 1:
            w, h = im.size
            res = im.draft(im.mode, (w // s, h // s))
            if res is not None:
                # draft() reports the decoded extent in source pixels; its ratio is the scale.
                scale = w / res[1][2]
                box = (box[0] / scale, box[1] / scale, box[2] / scale, box[3] / scale)
    if im.mode not in _LATE_CONVERT:
        im = im.convert("RGB")
    return im, box


def _finish(out: Image.Image, flip: bool) -> np.ndarray:
    if out.mode != "RGB":
        out = out.convert("RGB")
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_train(
    path: str,
    size: int,
    params: Callable[[int, int], TrainParams],
    use_draft: bool = True,
) -> np.ndarray:
    """RandomResizedCrop + flip of one image file; ``params(width, height)`` draws the crop."""
    with Image.open(path) as im:
        w, h = im.size
        p = params(w, h)
        c = p.crop
        box = (float(c.left), float(c.top), float(c.left + c.width), float(c.top + c.height))
        src, box = _prepare(im, box, size, size, use_draft)
        out = src.resize((size, size), Image.Resampling.BILINEAR, box=box)
        return _finish(out, p.flip)


def decode_val(path: str, resize: int, crop: int, use_draft: bool = True) -> np.ndarray:
    """Resize(shorter side -> resize) + CenterCrop(crop) of one image file."""
    with Image.open(path) as im:
        w, h = im.size
        box = val_source_box(w, h, resize, crop)
        # The box keeps at least crop x crop after reduction exactly when the shorter side
        # keeps at least ``resize``: the resample still only shrinks.
        src, box = _prepare(im, box, crop, crop, use_draft)
        out = src.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
        return _finish(out, False)


# --- libjpeg-turbo through torchvision, resampling with torch's uint8 kernels ---------------
#
# Measured (docs/benchmarks.md, "Input pipeline"): on ImageNet-sized JPEGs torchvision's
# decode_jpeg beats Pillow's decoder once Pillow's RGBX-to-array copy is counted, and torch's
# uint8 channels-last antialiased bilinear resize is about 3x faster than Pillow's resize.
# Both decoders are libjpeg-turbo with the accurate IDCT: the decoded pixels are identical.

JPEG_MAGIC = b"\xff\xd8\xff"
# Start-of-frame markers that carry the image size (all SOFn except DHT, JPG and DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def decode_jpeg(
    data: torch.Tensor | list[torch.Tensor], device: str | torch.device = "cpu"
) -> torch.Tensor | list[torch.Tensor]:
    """torchvision's libjpeg-turbo / nvJPEG decoder to RGB, without its deprecation warning.

    torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on every
    call; the project pins torchvision, and the decode tests catch any change of behaviour.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _tv_decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _jpeg_headers(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, components, offset of the first scan) by walking the markers."""
    if not data.startswith(JPEG_MAGIC):
        return None
    i, n = 2, len(data)
    frame = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        seg = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _SOF and i + 10 <= n:
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            frame = (w, h, data[i + 9]) if w > 0 and h > 0 else None
        if marker == 0xDA:
            return None if frame is None else (*frame, i)
        if seg < 2:
            return None
        i += 2 + seg
    return None


def jpeg_info(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) of a JPEG whose headers parse up to the first scan."""
    h = _jpeg_headers(data)
    return None if h is None else (h[0], h[1], h[2])


def jpeg_complete(data: bytes, tail: int = 4096) -> bool:
    """True when the end-of-image marker follows the first scan (not a truncated file).

    Thumbnails in APP segments carry their own end marker, hence the comparison with the
    scan offset; up to ``tail`` bytes of padding after the marker are accepted.
    """
    h = _jpeg_headers(data)
    return h is not None and data.rfind(b"\xff\xd9", max(h[3], len(data) - tail)) != -1


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or None if it cannot be found."""
    info = jpeg_info(data)
    return None if info is None else (info[0], info[1])


def resized_crop_hwc(
    chw: torch.Tensor, top: int, left: int, height: int, width: int, size: int, flip: bool
) -> torch.Tensor:
    """Crop of a uint8 CHW image resized to size x size (antialiased bilinear), as HWC."""
    crop = chw[None, :, top : top + height, left : left + width]
    # torch's vectorised uint8 path wants channels-last input; the copy only touches the crop.
    crop = crop.contiguous(memory_format=torch.channels_last)
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
    out = out[0].permute(1, 2, 0)
    return out.flip(1) if flip else out


def decode_train_tv(path: str, size: int, params: Callable[[int, int], TrainParams]) -> np.ndarray:
    """RandomResizedCrop + flip: libjpeg-turbo decode (torchvision) and torch resampling.

    Crops at least twice the output take Pillow's reduced-scale (draft) decode instead, and
    non-JPEG files Pillow's general one.
    """
    with open(path, "rb") as f:
        data = f.read()
    wh = jpeg_size(data)
    if wh is None:
        return decode_train(path, size, params)
    p = params(*wh)
    c = p.crop
    if draft_scale(c.width, c.height, size, size) > 1:
        return decode_train(path, size, lambda w, h: p)
    chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if tuple(chw.shape[1:]) != (wh[1], wh[0]):
        raise ValueError(f"decoded size {tuple(chw.shape[1:])} differs from the header {wh}")
    return resized_crop_hwc(chw, c.top, c.left, c.height, c.width, size, p.flip).numpy()
