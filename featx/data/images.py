"""Reading images the same way everywhere: upright, 8-bit RGB, rescaled so the short side is Q.

Decisions, stated once:
- EXIF orientation is applied (the image is rotated/flipped upright, as a viewer shows it)
  before anything else; sizes and crop boxes refer to the upright image.
- Grayscale, palette and CMYK become RGB; 16-bit images are scaled to 8 bits (v / 257);
  transparency is composited over white.
- Rescaling keeps the aspect ratio: short side = Q, long side = int(Q * long / short) (the
  rule of torchvision's Resize), with PIL's bilinear filter, which is antialiased when
  shrinking (PIL widens the filter support by the scale factor).
- Images above FEATX_MAX_PIXELS pixels (default: PIL's 89,478,485) are refused as possible
  decompression bombs.
"""
from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .. import paths
from ..errors import ImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
INTERPOLATION = "PIL bilinear, antialiased (short side = Q, long side = int(Q*long/short))"


@dataclass(frozen=True)
class Crop:
    """A region of an image file: box = (x1, y1, x2, y2), 0-based pixels, x2/y2 exclusive."""

    path: str
    box: tuple

    def __str__(self):
        return f"{self.path}[{','.join(str(v) for v in self.box)}]"


def name_of(item, index: int | None = None) -> str:
    if isinstance(item, (str, Path, Crop)):
        return str(item)
    return f"image #{index}" if index is not None else "image"


ACCEPTED = ("file paths, encoded bytes, PIL images, HxWx3 uint8 arrays, uint8 torch tensors (CxHxW, as "
            "torchvision.io.read_image returns) or (image, label) items of a torchvision dataset")


def as_images(images) -> list:
    """What featx reads, from what people have: a list of paths, bytes, PIL images or HxWx3
    uint8 arrays as they are; uint8 torch tensors (CxHxW or HxW) as HxWx3 arrays; (image,
    label) items of a torchvision dataset as their image; any iterable of those (a dataset, a
    generator, a (N, C, H, W) tensor). Anything else is one ImageError naming the item."""
    if isinstance(images, (str, os.PathLike, bytes)):
        raise ImageError(f"{os.fsdecode(images) if not isinstance(images, bytes) else 'bytes'}: pass a list of "
                         "images (e.g. [path]), not one")
    try:
        items = list(images)
    except TypeError:
        raise ImageError(f"a {type(images).__name__} is not a collection of images; pass a list of "
                         f"{ACCEPTED}") from None
    return [_as_image(item, i) for i, item in enumerate(items)]


def _as_image(item, index: int):
    if isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview, Crop, Image.Image, np.ndarray)):
        return item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, np.integer)):
        return _as_image(item[0], index)  # (image, label) from a torchvision dataset
    if type(item).__module__.split(".")[0] == "torch" and hasattr(item, "numpy"):
        a = item.detach().cpu()
        if str(a.dtype) != "torch.uint8" or a.dim() not in (2, 3) or (a.dim() == 3 and a.shape[0] not in (1, 3, 4)):
            raise ImageError(f"image #{index}: a torch tensor of {a.dtype} and shape {tuple(a.shape)}; featx "
                             "takes uint8 CxHxW (torchvision.io.read_image, transforms.PILToTensor), "
                             "not a normalised float tensor")
        a = a.numpy()
        return a if a.ndim == 2 else np.ascontiguousarray(a.transpose(1, 2, 0))
    raise ImageError(f"image #{index}: {type(item).__name__} is not an image type featx reads; pass {ACCEPTED}")


def decode_threads(workers=None) -> int:
    """Threads that read and decode images ahead of the net (or hash them): as given, else up
    to 4 (the CPUs this process may use)."""
    return int(workers) if workers else min(4, os.cpu_count() or 1)


def max_pixels() -> int:
    return paths.max_pixels(Image.MAX_IMAGE_PIXELS)


def target_size(size: tuple[int, int], q: int) -> tuple[int, int]:
    """(h, w) after rescaling the short side to q, aspect kept (torchvision's Resize rule)."""
    h, w = size
    if h <= w:
        return q, int(q * w / h)
    return int(q * h / w), q


def _open(item, index=None) -> Image.Image:
    """Open lazily (header only) with a uniform error for every way a file can be bad."""
    name = name_of(item, index)
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise ImageError(f"{name}: arrays must be HxW or HxWx3 uint8, got "
                             f"{item.dtype} of shape {item.shape}")
        return Image.fromarray(item[..., 0] if item.ndim == 3 and item.shape[2] == 1 else item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        source = io.BytesIO(item)  # an encoded file held in memory
    else:
        source = Path(item.path if isinstance(item, Crop) else item)
    try:
        if isinstance(source, Path) and source.is_file() and source.stat().st_size == 0:
            raise ImageError(f"{name}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found", transient=True) from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except OSError as e:  # no permission, an I/O error: may pass
        raise ImageError(f"{name}: cannot open ({e})", transient=True) from None
    w, h = img.size
    if w * h > max_pixels():
        raise ImageError(f"{name}: {w}x{h} = {w * h:,} pixels exceeds the {max_pixels():,} pixel "
                         "limit (decompression-bomb guard; raise FEATX_MAX_PIXELS to allow it)")
    return img


def _upright_size(img: Image.Image) -> tuple[int, int]:
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not a broken image
        orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_size(item, index: int | None = None) -> tuple[int, int]:
    """(h, w) of the upright image (or crop) from its header, without decoding pixels."""
    if isinstance(item, Crop):
        _check_box(item, read_size(item.path, index), index)
        x1, y1, x2, y2 = item.box
        return y2 - y1, x2 - x1
    return _upright_size(_open(item, index))


def _check_box(crop: Crop, size, index):
    h, w = size
    x1, y1, x2, y2 = crop.box
    if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise ImageError(f"{name_of(crop, index)}: box {crop.box} lies outside the "
                         f"{w}x{h} image or is empty")


def load_rgb(item, index: int | None = None) -> Image.Image:
    """Decode fully into an upright 8-bit RGB PIL image."""
    source = item.path if isinstance(item, Crop) else item
    img = _open(source, index)
    try:
        if _is_png16_color(img):
            img = _png16_to_rgb(img, source)
        else:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        # An OSError with an errno is the system's (the disk, the network), not the data's
        transient = isinstance(e, OSError) and e.errno is not None
        what = "cannot read" if transient else "truncated or corrupt image data"
        raise ImageError(f"{name_of(item, index)}: {what} ({e})", transient=transient) from None
    if isinstance(item, Crop):
        _check_box(item, (img.height, img.width), index)
        img = img.crop(item.box)
    return img


_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _is_png16_color(img: Image.Image) -> bool:
    """A 16-bit RGB(A) PNG, which PIL can only decode by dropping the low byte (v >> 8)."""
    return (img.format == "PNG" and bool(img.tile)
            and getattr(img.tile[0], "args", None) in ("RGB;16B", "RGBA;16B"))


def _png16_to_rgb(img: Image.Image, source) -> Image.Image:
    """16-bit colour PNG -> 8-bit RGB as documented: round(v / 257), alpha over white."""
    import png  # pypng: decodes the full 16 bits
    if isinstance(source, (bytes, bytearray, memoryview)):
        reader = png.Reader(bytes=bytes(source))
    else:
        reader = png.Reader(filename=str(source))
    w, h, rows, info = reader.asDirect()
    planes = info["planes"]
    a = np.vstack([np.asarray(r, dtype=np.float64) for r in rows]).reshape(h, w, planes) / 65535.0
    rgb = a[..., :3]
    if planes == 4:  # composite over white, as for 8-bit images
        rgb = rgb * a[..., 3:] + (1.0 - a[..., 3:])
    out = Image.fromarray(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    return out.transpose(_ORIENT[orientation]) if orientation in _ORIENT else out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode != "F":
            a = a / 257.0  # 16-bit range onto 8-bit
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def load_resized(item, q: int, index: int | None = None) -> np.ndarray:
    """Upright RGB image with its short side rescaled to q, as an (H, W, 3) uint8 array."""
    img = load_rgb(item, index)
    h, w = target_size((img.height, img.width), q)
    if (h, w) != (img.height, img.width):
        img = img.resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def read_sizes(items, workers: int = 4, progress: bool = False, desc: str = "reading image sizes"):
    """Upright (h, w) of every item from its header, in threads: (sizes, {index: reason}).

    An unreadable item's size is None and its reason is recorded; nothing is raised."""
    from tqdm.auto import tqdm

    sizes, errors = [None] * len(items), {}

    def one(i):
        try:
            return i, read_size(items[i], i), None
        except ImageError as e:
            return i, None, str(e)
        except Exception as e:  # a decoder bug is this image's failure, not the run's
            return i, None, f"{name_of(items[i], i)}: cannot read ({type(e).__name__}: {e})"

    with ThreadPoolExecutor(max(1, workers)) as pool, tqdm(total=len(items), desc=desc, unit="img",
                                                           disable=not progress, leave=False) as bar:
        for i, size, err in pool.map(one, range(len(items))):
            sizes[i] = size
            if err:
                errors[i] = err
            bar.update()
    return sizes, errors
