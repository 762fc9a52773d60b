"""The project's one image reader (training mapper, test mapper, evaluators).

detectron2's ``read_image`` converts with PIL's ``Image.convert``, which clips 16-bit images to 255 (a
16-bit PNG becomes all white) and leaves decoder errors without the file name ("image file is
truncated").  Here every mode is handled explicitly and every error names the file:

- 8-bit modes (L, P, LA, PA, RGBA, CMYK, YCbCr, 1, ...): PIL ``convert("RGB")`` as detectron2 (RGBA loses
  its alpha; grey is replicated into three channels);
- 16-bit grey (``I;16``, ``I;16B``, ...) and 32-bit integer ``I`` holding values in 0..65535: scaled to
  8 bits over the full 16-bit range, ``round(v * 255 / 65535)`` (= ``round(v / 257)``).  A fixed range
  (not per-image min/max stretching) keeps the same sensor value at the same brightness in every image, and
  is exact for images that use the full range; an image that uses only 12 bits comes out dark (its
  maximum 4095 maps to 16), so such data should be converted by its preparation script;
- ``I`` with values outside 0..65535 and float ``F`` images are rejected: they have no defined intensity
  range, and any guess would be silently wrong;
- EXIF orientation is applied to images (as detectron2's ``read_image``), never to label maps: a label map
  is an array of ids, and its pixels must stay where the preparation script wrote them.
"""
from typing import Optional

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "read_image", "read_label", "pil_to_rgb_array", "scale_16bit_to_8bit"]

_EXIF_ORIENTATION = 0x0112
# EXIF orientation -> PIL transpose (the table of detectron2's data/detection_utils._apply_exif_orientation,
# itself Pillow's ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageReadError(OSError):
    """An image or label file that cannot be read as the project needs; the message names the file."""


def _describe(error: BaseException) -> str:
    """``"<what happened>; <what to do>"`` for a decoder error."""
    if isinstance(error, (UnidentifiedImageError, ImportError)):
        # an ImportError comes from a PIL format plugin registered by another package (e.g. a HEIF opener)
        # that was asked to identify the file and lacks its own dependency: PIL found no format either way
        return ("PIL cannot identify its format: it is not an image file PIL can decode; replace it or remove "
                "it from the dataset folder")
    text = f"{type(error).__name__}: {error}"
    if "truncated" in str(error).lower():  # "image file is truncated", "Truncated File Read"
        return (f"{text}; the file is incomplete (an interrupted download, copy or extraction?): re-download "
                "or re-extract it, or remove it (and its label) from the dataset folder")
    return f"{text}; check that the file is an uncorrupted image"


def scale_16bit_to_8bit(array: np.ndarray) -> np.ndarray:
    """uint8 ``round(v * 255 / 65535)`` of integer values in 0..65535 (see the module docstring)."""
    wide = array.astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001 - a damaged EXIF block is ignored, as detectron2 does
        return image
    method = _EXIF_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def pil_to_rgb_array(image: Image.Image, path: str) -> np.ndarray:
    """uint8 array [H, W, 3] (RGB) of a PIL image in any mode (rules in the module docstring)."""
    mode = image.mode
    if mode == "F":
        raise ImageReadError(
            f"image {path!r} is a floating-point image (PIL mode 'F'), whose intensities have no defined "
            "range; convert it to an 8-bit (or 16-bit) RGB or grey image first"
        )
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ImageReadError(
                f"image {path!r} is a 32-bit integer image (PIL mode 'I') with values in "
                f"{int(values.min())}..{int(values.max())}, outside the 16-bit range 0..65535 that is scaled "
                "to 8 bits; convert it to an 8-bit or 16-bit image first"
            )
        grey = scale_16bit_to_8bit(values)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def read_image(path: str, format: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 [H, W, 3], EXIF orientation applied.

    Args:
        path: the file (any path detectron2's PathManager opens).
        format: "RGB" (the model's input) or "BGR".
    Raises:
        FileNotFoundError: no such file.
        ImageReadError: the file cannot be decoded (truncated, not an image) or its mode has no defined
            8-bit rendering (float, 32-bit values); the message names the file and what to do.
    """
    if format not in ("RGB", "BGR"):
        raise ValueError(f"read_image: format must be 'RGB' or 'BGR', got {format!r} (INPUT.FORMAT)")
    if not PathManager.exists(path):
        raise FileNotFoundError(f"image file {path!r} does not exist (was it moved after the dataset was registered?)")
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, inside the try: errors surface here, with the file name
            image = _apply_exif_orientation(image)
            array = pil_to_rgb_array(image, path)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - every decoder error becomes one that names the file
        raise ImageReadError(f"cannot read image {path!r}: {_describe(e)}") from e
    return array[:, :, ::-1].copy() if format == "BGR" else array


def read_label(path: str, dtype: Optional[np.dtype] = None) -> np.ndarray:
    """Read a label map as stored: [H, W] ids (8-bit PNG, palette indices, 16-bit TIFF), or [H, W, C] for a
    multi-channel file (which :func:`sam_mi.data.validation.check_label` rejects with its own message).

    Args:
        dtype: convert to this dtype (e.g. ``int`` as detectron2's evaluators ask).
    Raises:
        FileNotFoundError / ImageReadError naming the file, as :func:`read_image`.
    """
    if not PathManager.exists(path):
        raise FileNotFoundError(f"label file {path!r} does not exist (was it moved after the dataset was registered?)")
    try:
        with PathManager.open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            array = np.asarray(image)
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(f"cannot read label map {path!r}: {_describe(e)}") from e
    if array.dtype == bool:  # mode "1"
        array = array.astype(np.uint8)
    if array.dtype.byteorder == ">":  # "I;16B"
        array = array.astype(array.dtype.newbyteorder("="))
    return array if dtype is None else array.astype(dtype)
