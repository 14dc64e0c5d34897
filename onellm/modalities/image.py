"""Image: Pillow decode -> RGB -> resize + centre crop -> encoder mean/std. Tokenizer: the encoder's patch embedding."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from onellm.modalities import register_modality
from onellm.modalities.base import ONELLM_SET, TOO_LONG, WRONG_SHAPE, Modality, Source, npy_header_shape, npy_shape

# CLIP's statistics; presets replace them with the encoder's own (DINOv2 uses ImageNet's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
# Pillow modes of 16/32-bit single-channel images: depth sensors write these; photos never do.
DEEP_GREY_MODES = ("I", "I;16", "I;16B", "I;16L")
# Refuse images whose pixel count could exhaust memory when decoded (decompression bombs): 64 MP.
MAX_PIXELS = 64_000_000


class PatchTokenizer(nn.Module):
    """Image-like inputs ``[B, 3, H, W]`` -> patch tokens with positions ``[B, (H/p)*(W/p), C]``.

    Holds no parameters: it is the (frozen) patch embedding and position table of the shared
    encoder, so the whole path up to the projector is frozen and can be cached.
    """

    def forward(self, pixels: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
        return encoder.embed_image(pixels)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bicubic) and centre-crop to ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    resized = image.resize((max(size, round(width * scale)), max(size, round(height * scale))), Image.BICUBIC)
    left = (resized.width - size) // 2
    top = (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def fit_square_array(array: np.ndarray, size: int) -> np.ndarray:
    """Float ``[H, W, C]`` -> ``[size, size, C]`` like :func:`fit_square`, channel by channel at full precision."""
    channels = [
        np.asarray(fit_square(Image.fromarray(array[..., c].astype(np.float32), mode="F"), size))
        for c in range(array.shape[-1])
    ]
    return np.stack(channels, axis=-1)


def normalise(array: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] -> ``[3, H, W]`` standardised with per-channel mean/std."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    return (tensor - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def grey_pixels(unit: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """A single-channel map ``[H, W]`` scaled to [0, 1] -> ``[3, size, size]`` for the encoder's patch embedding:
    resized and centre-cropped at full precision, the one channel repeated three times, encoder mean/std.

    Why three copies and not a 1-channel embedding: the frozen patch embedding is a Conv2d over RGB, and feeding the
    grey value to all three inputs equals a one-channel convolution whose kernel is the sum of the RGB kernels --
    how ImageNet-pretrained backbones are applied to radiographs and thermal images, and how the encoder saw grey
    photos in pretraining. The encoder stays untouched, so the whole path up to the projector is frozen and its
    features cache; a learned 1 -> 3 mapping would make it trainable for no gain while the encoder is frozen."""
    square = fit_square_array(np.asarray(unit, dtype=np.float32)[..., None], size)
    return normalise(np.repeat(np.clip(square, 0.0, 1.0), 3, axis=-1), mean, std)


def open_image(modality: Modality, source: Source, data: bytes | None = None) -> Image.Image:
    """Decode an image file/bytes with Pillow, refusing decompression bombs and truncated files."""
    data = modality.read_bytes(source) if data is None else data
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise modality.fail(source, f"{image.width}x{image.height} pixels exceeds the {MAX_PIXELS} pixel limit")
        image.load()
    except UnidentifiedImageError:
        raise modality.fail(source, "not a decodable image (unknown or corrupt image format)") from None
    except (OSError, Image.DecompressionBombError, SyntaxError) as exc:
        raise modality.fail(source, f"not a decodable image ({exc})") from None
    return image


def image_mode(path: Path) -> str | None:
    """The Pillow mode of an image file (only its header is read), or None when Pillow cannot identify it."""
    try:
        with Image.open(path) as image:
            return image.mode
    except Exception:  # not an image Pillow can identify
        return None


class ImageLikeModality(Modality):
    """A modality that becomes a square 3-channel image and uses the encoder's own patch embedding."""

    image_like = True
    defaults = {"image_size": 224, "mean": CLIP_MEAN, "std": CLIP_STD}
    # 32 px in the tiny preset (4x4 patches of 8 px), 112 px with DINOv2's statistics in the small one (8x8 of 14 px),
    # 224 px with CLIP's in the 7b one.
    preset_options = {
        "tiny": {"image_size": 32},
        "small": {"image_size": 112, "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "7b": {"image_size": 224},
    }

    def precheck(self, data: bytes, limits: dict[str, float]) -> str | None:
        """Refuse an image whose header announces more than ``max_image_pixels`` pixels (nothing is decoded)."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
        except Image.DecompressionBombError as exc:
            return f"image refused as a decompression bomb ({exc})"
        except Exception:  # not an image Pillow can identify: preprocess reports it
            return None
        limit = limits.get("max_image_pixels")
        if limit is not None and width * height > limit:
            return f"image is {width}x{height} = {width * height} pixels, above the server's {int(limit)}-pixel limit"
        return None

    def input_shape(self, **options: Any) -> tuple[int, ...]:
        size = self.options(**options)["image_size"]
        return (3, size, size)

    def build_tokenizer(self, width: int, patch_size: int, **options: Any) -> nn.Module:
        return PatchTokenizer()


# Pillow modes of single-channel images: 8-bit ("L"), 16-bit ("I;16*"), 32-bit integer ("I") and float ("F").
GREY_MODES = ("L", *DEEP_GREY_MODES, "F")


def load_grey(modality: Modality, source: Source) -> np.ndarray:
    """A single-channel image as float32 ``[H, W]`` in its file's own units: an 8/16-bit PNG (or any image Pillow
    reads; colour ones are read as luminance), a ``.npy`` file/bytes or an array ``[H, W]`` (``[H, W, 1]`` and grey
    saved as ``[H, W, 3]`` are accepted). Errors name the input: wrong shape, too many pixels, NaN."""
    if isinstance(source, (np.ndarray, torch.Tensor)):
        grey = modality.load_array(source)
    else:
        data = modality.read_bytes(source)
        if data[:6] == b"\x93NUMPY":
            grey = modality.load_array(source)
        else:
            image = open_image(modality, source, data)
            grey = np.asarray(image if image.mode in GREY_MODES else image.convert("L"), dtype=np.float32)
    if grey.ndim == 3 and grey.shape[-1] in (1, 3, 4):
        grey = grey[..., :3].mean(axis=-1)  # one channel, or a grey image saved as RGB(A)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise modality.fail(
            source, f"expected a single-channel [H, W] image, found shape {list(grey.shape)}", WRONG_SHAPE
        )
    if grey.size > MAX_PIXELS:
        raise modality.fail(
            source, f"{grey.shape[1]}x{grey.shape[0]} pixels exceeds the {MAX_PIXELS} pixel limit", TOO_LONG
        )
    modality.check_finite(source, grey)
    return grey.astype(np.float32, copy=False)


class GreyImageModality(ImageLikeModality):
    """A single-channel image (X-ray, infrared) with its own scaling to [0, 1], then the image path through
    :func:`grey_pixels`. Subclasses implement :meth:`scale`."""

    suffixes = (".png", ".tif", ".tiff", ".npy")

    def precheck(self, data: bytes, limits: dict[str, float]) -> str | None:
        """The image header's pixel count (see ImageLikeModality), or a ``.npy`` header's ``H x W``."""
        shape, limit = npy_header_shape(data), limits.get("max_image_pixels")
        if shape is None:
            return super().precheck(data, limits)
        if limit is not None and len(shape) >= 2 and shape[0] * shape[1] > limit:
            return f"array is {shape[1]}x{shape[0]} = {shape[0] * shape[1]} pixels, above the server's {int(limit)}-pixel limit"
        return None

    def file_match(self, path: Path) -> int:
        """A single-channel image or an ``[H, W]`` array, weakly: a grey PNG is likelier a photo (8-bit) or a depth
        map (16-bit), an ``[H, W]`` array a depth map; those win ties (curriculum order), so the chat page's dropdown
        picks this modality."""
        if path.suffix.lower() == ".npy":
            shape = npy_shape(path)
            return 1 if shape is not None and len(shape) == 2 else 0
        return 1 if image_mode(path) in GREY_MODES else 0

    def scale(self, grey: np.ndarray, **options: Any) -> np.ndarray:
        """``[H, W]`` in the file's units -> ``[H, W]`` in [0, 1]."""
        raise NotImplementedError

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        unit = self.scale(load_grey(self, source).astype(np.float64), **opts)
        return grey_pixels(unit, opts["image_size"], opts["mean"], opts["std"])


@register_modality
class ImageModality(ImageLikeModality):
    name = "image"
    group = ONELLM_SET
    order = 0
    part_types = ("image_url",)
    url_part = True
    suffixes = IMAGE_SUFFIXES

    def file_match(self, path: Path) -> int:
        """Photos: any image file except 16/32-bit single-channel ones (depth maps)."""
        return 0 if image_mode(path) in DEEP_GREY_MODES else 2

    def encode_array(self, array: np.ndarray, extras: dict | None = None) -> tuple[bytes, str]:
        """An ``[H, W, 3]`` array (0..255, or 0..1 floats) as PNG."""
        array = np.asarray(array, dtype=np.float32)
        scale = 255.0 if array.max(initial=0.0) > 1.0 else 1.0
        buffer = io.BytesIO()
        Image.fromarray(np.clip(array / scale * 255.0, 0, 255).round().astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue(), "png"

    def preprocess(self, source: Source, extras: dict | None = None, **options: Any) -> torch.Tensor:
        opts = self.options(**options)
        if isinstance(source, (np.ndarray, torch.Tensor)):
            array = self.load_array(source)
            if array.ndim != 3 or array.shape[-1] != 3:
                raise self.fail(
                    source, f"expected an [H, W, 3] RGB array, found shape {list(array.shape)}", WRONG_SHAPE
                )
            self.check_finite(source, array)
            scale = 255.0 if array.max() > 1.0 else 1.0
            image = Image.fromarray(np.clip(array / scale * 255.0, 0, 255).astype(np.uint8))
        else:
            image = open_image(self, source)
        rgb = fit_square(image.convert("RGB"), opts["image_size"])
        return normalise(np.asarray(rgb, dtype=np.float32) / 255.0, opts["mean"], opts["std"])
