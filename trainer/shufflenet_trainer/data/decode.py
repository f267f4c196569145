"""Host decoding (Pillow, torchvision's and simplejpeg's libjpeg-turbo) and JPEG header
parsing: one uint8 HWC array per sample, little work per image. The Pillow path:

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

from .transforms import (
    TrainParams,
    center_crop_offsets,
    draft_scale,
    resize_shorter,
    val_source_box,
)

try:  # optional: the trainer extra installs it; without it the tv-jpeg path is the default
    import simplejpeg
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    simplejpeg = None

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


def jpeg_complete(
    data: bytes, tail: int = 4096, *, headers: tuple[int, int, int, int] | None = None
) -> bool:
    """True when the end-of-image marker follows the first scan (not a truncated file).

    Thumbnails in APP segments carry their own end marker, hence the comparison with the
    scan offset; up to ``tail`` bytes of padding after the marker are accepted. ``headers``:
    ``_jpeg_headers(data)`` when the caller has it already (saves a second walk).
    """
    h = _jpeg_headers(data) if headers is None else headers
    return h is not None and data.rfind(b"\xff\xd9", max(h[3], len(data) - tail)) != -1


def gpu_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a complete grayscale or YCbCr JPEG, which nvJPEG decodes right;
    None for anything else (one header walk).

    CMYK/YCCK (4 components) came out of nvJPEG with wrong colours and truncated files
    without an error, so those, and non-JPEG files, take the host path instead.
    """
    h = _jpeg_headers(data)
    if h is None or h[2] not in (1, 3) or not jpeg_complete(data, headers=h):
        return None
    return h[0], h[1]


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
    return _train_tv(path, data, size, params)


def _train_tv(
    path: str, data: bytes, size: int, params: Callable[[int, int], TrainParams]
) -> np.ndarray:
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


# --- libjpeg-turbo through simplejpeg (sj-jpeg) ---------------------------------------------
#
# Measured (docs/benchmarks.md, "Input pipeline"): simplejpeg's decoder is libjpeg-turbo with
# the accurate IDCT, like torchvision's and Pillow's, and gives identical pixels (tested), but
# costs less per image (0.62 against torchvision's 0.68 ms for a 500x375 photo) and returns
# HWC RGB, the host batches' layout, straight from the file's bytes.
# Its DCT-domain scaled decode gives the same pixels as Pillow's draft mode (tested), so it
# replaces draft() as well.
#
# Only 3-component JPEGs are decoded here. Anything simplejpeg refuses (truncated or corrupt
# data: with strict=True it raises on libjpeg's warnings too; unusual subsampling), and
# grayscale, CMYK/YCCK and non-JPEG files, take the tv-jpeg path (train) or the Pillow path
# (val) exactly as without simplejpeg, so what is decoded, skipped or converted is unchanged.


def simplejpeg_available() -> bool:
    return simplejpeg is not None


def _sj_rgb(data: bytes, width: int, height: int, scale: int) -> np.ndarray | None:
    """HWC RGB pixels at 1/``scale`` (1, 2, 4 or 8), or None where simplejpeg refuses."""
    w, h = -(-width // scale), -(-height // scale)  # libjpeg's scaled size rounds up
    # min_factor and the minimum size leave exactly one scale, 1/scale: simplejpeg would
    # otherwise be free to pick an M/8 scale, which libjpeg-turbo decodes without SIMD.
    kw = {"min_factor": scale, "min_width": w, "min_height": h} if scale > 1 else {}
    try:
        out = simplejpeg.decode_jpeg(data, "RGB", strict=True, **kw)
    except ValueError:
        return None
    return out if out.shape == (h, w, 3) else None


def _sj_info(data: bytes) -> tuple[int, int] | None:
    if simplejpeg is None:
        return None
    info = jpeg_info(data)
    return (info[0], info[1]) if info is not None and info[2] == 3 else None


def _resample_box(
    hwc: np.ndarray, box: tuple[float, float, float, float], size: int, flip: bool
) -> np.ndarray:
    # Pillow resamples a float box (the crop mapped into a reduced decode); torch cannot.
    out = Image.fromarray(hwc).resize((size, size), Image.Resampling.BILINEAR, box=box)
    return _finish(out, flip)


def decode_train_sj(path: str, size: int, params: Callable[[int, int], TrainParams]) -> np.ndarray:
    """RandomResizedCrop + flip: libjpeg-turbo decode (simplejpeg) and torch resampling.

    Crops at least twice the output are decoded at reduced scale and resampled by Pillow,
    as the draft path does (same pixels); other files take :func:`decode_train_tv`'s path.
    """
    with open(path, "rb") as f:
        data = f.read()
    wh = _sj_info(data)
    if wh is None:
        return _train_tv(path, data, size, params)
    p = params(*wh)
    c = p.crop
    s = draft_scale(c.width, c.height, size, size)
    hwc = _sj_rgb(data, wh[0], wh[1], s)
    if hwc is None:
        return _train_tv(path, data, size, params)
    if s > 1:
        box = (c.left / s, c.top / s, (c.left + c.width) / s, (c.top + c.height) / s)
        return _resample_box(hwc, box, size, p.flip)
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    return resized_crop_hwc(chw, c.top, c.left, c.height, c.width, size, p.flip).numpy()


def decode_val_sj(path: str, resize: int, crop: int) -> np.ndarray:
    """Resize(shorter side -> resize) + CenterCrop(crop): simplejpeg decode, torch resize.

    The whole image is resized and then cropped, in the reference's order: with torch's
    resampler that still gives ~1.8x the images/s of Pillow resampling only the kept box
    (measured), and it matches the PIL reference to the same tolerance (tested). Images whose
    kept box is at least twice the crop are decoded at reduced scale and resampled by Pillow,
    as :func:`decode_val` does (same pixels); other files take :func:`decode_val`'s path.
    """
    with open(path, "rb") as f:
        data = f.read()
    wh = _sj_info(data)
    if wh is None:
        return decode_val(path, resize, crop)
    w, h = wh
    box = val_source_box(w, h, resize, crop)
    s = draft_scale(box[2] - box[0], box[3] - box[1], crop, crop)
    hwc = _sj_rgb(data, w, h, s)
    if hwc is None:
        return decode_val(path, resize, crop)
    if s > 1:
        return _resample_box(hwc, (box[0] / s, box[1] / s, box[2] / s, box[3] / s), crop, False)
    new_w, new_h = resize_shorter(w, h, resize)
    top, left = center_crop_offsets(new_w, new_h, crop)
    # An HWC array seen as [1, C, H, W] is channels-last contiguous: torch's vectorised
    # uint8 kernel reads it without a copy.
    nchw = torch.from_numpy(hwc).permute(2, 0, 1)[None]
    out = F.interpolate(nchw, size=(new_h, new_w), mode="bilinear", antialias=True)
    return out[0, :, top : top + crop, left : left + crop].permute(1, 2, 0).numpy()
