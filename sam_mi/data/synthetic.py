"""A small, learnable synthetic semantic-segmentation set in COCO-Stuff's prepared on-disk layout.

``<root>/synthetic-stuff/images/{train2017,val2017}/*.jpg`` (RGB) and
``<root>/synthetic-stuff/annotations_detectron2/{train2017,val2017}/*.png`` (uint8 train ids, 255 =
ignore), registered as ``synthetic_stuff_{train,val}_sem_seg``. Each class (``SYNTHETIC_STUFF_CLASSES``:
sky, grass, water, sand, brick, snow, wood) has its own colour *and* texture, laid out as a background
fill plus random rectangles, wobbly blobs and stripes, so a tiny CLIP + aggregator can learn it in a few
hundred CPU iterations at ~96-128 px. About a quarter of the images carry an "unlabelled clutter" patch
(random pixels, label 255) so the ignore path is exercised.

Each image is drawn from its own generator seeded by ``(seed, split, index)``: the same seed gives the
same files, whatever the counts.

CLI: ``python -m sam_mi.data.synthetic --root datasets --num-train 200 --num-val 40``.
"""
import argparse
import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from sam_mi.data.datasets.class_names import SYNTHETIC_STUFF_CLASSES

__all__ = ["generate_synthetic_stuff", "synthesize_sample", "SYNTHETIC_STUFF_CLASSES", "IGNORE_LABEL"]

IGNORE_LABEL = 255
_SPLITS = (("train2017", 0), ("val2017", 1))

Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _noise(rng: np.random.Generator, shape: Tuple[int, int], sigma: float) -> np.ndarray:
    """Grey per-pixel Gaussian noise (H, W, 1)."""
    return rng.normal(0.0, sigma, size=(*shape, 1))


def _sky(rng, yy, xx):  # light blue, smooth vertical gradient
    grad = (1.0 - yy / max(yy.max(), 1))[..., None] * np.array([-20.0, -10.0, 10.0])
    return np.array([125.0, 180.0, 235.0]) + grad + _noise(rng, yy.shape, 3)


def _grass(rng, yy, xx):  # green, vertical blades (column streaks) + strong speckle
    streak = rng.normal(0.0, 22.0, size=(1, yy.shape[1], 1))
    return np.array([60.0, 145.0, 45.0]) + streak * np.array([0.5, 1.0, 0.4]) + _noise(rng, yy.shape, 12)


def _water(rng, yy, xx):  # deep blue, horizontal waves
    phase = rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * yy / 7.0 + phase + 1.5 * np.sin(2 * np.pi * xx / 29.0))[..., None]
    return np.array([35.0, 85.0, 170.0]) + 28.0 * wave + _noise(rng, yy.shape, 4)


def _sand(rng, yy, xx):  # beige, fine speckle
    return np.array([218.0, 192.0, 135.0]) + _noise(rng, yy.shape, 16)


def _brick(rng, yy, xx):  # red-brown bricks with light mortar lines, rows offset by half a brick
    oy, ox = rng.integers(0, 12), rng.integers(0, 24)
    row = (yy + oy) // 12
    mortar = (((yy + oy) % 12) < 2) | (((xx + ox + (row % 2) * 12) % 24) < 2)
    base = np.where(mortar[..., None], np.array([205.0, 200.0, 190.0]), np.array([165.0, 62.0, 45.0]))
    return base + _noise(rng, yy.shape, 6)


def _snow(rng, yy, xx):  # near white, almost flat
    return np.array([246.0, 247.0, 252.0]) + _noise(rng, yy.shape, 3)


def _wood(rng, yy, xx):  # brown with wavy vertical grain
    phase = rng.uniform(0, 2 * np.pi)
    grain = np.sin(2 * np.pi * (xx + 4.0 * np.sin(2 * np.pi * yy / 37.0)) / 9.0 + phase)[..., None]
    return np.array([135.0, 88.0, 48.0]) + 30.0 * grain + _noise(rng, yy.shape, 4)


_TEXTURES: Dict[str, Texture] = {
    "sky": _sky, "grass": _grass, "water": _water, "sand": _sand, "brick": _brick, "snow": _snow,
    "wood": _wood,
}


def _layout(rng: np.random.Generator, h: int, w: int, num_classes: int) -> np.ndarray:
    """A (H, W) int64 label map: background class + 2..5 rectangles / wobbly blobs / stripes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    label = np.full((h, w), rng.integers(num_classes), dtype=np.int64)
    for _ in range(rng.integers(2, 6)):
        cls = rng.integers(num_classes)
        kind = rng.integers(3)
        if kind == 0:  # axis-aligned rectangle, 20-60 % of each side
            rh, rw = (rng.uniform(0.2, 0.6, size=2) * (h, w)).astype(int)
            y0, x0 = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
            mask = (yy >= y0) & (yy < y0 + rh) & (xx >= x0) & (xx < x0 + rw)
        elif kind == 1:  # blob: ellipse whose radius wobbles with the angle
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.15, 0.35, size=2) * (h, w)
            theta = np.arctan2(yy - cy, xx - cx)
            wobble = 1.0 + 0.2 * np.sin(rng.integers(2, 6) * theta + rng.uniform(0, 2 * np.pi))
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= wobble**2
        else:  # horizontal or vertical stripe, 10-30 % thick
            coord, size = (yy, h) if rng.random() < 0.5 else (xx, w)
            thick = rng.uniform(0.1, 0.3) * size
            start = rng.uniform(0, size - thick)
            mask = (coord >= start) & (coord < start + thick)
        label[mask] = cls
    return label


def synthesize_sample(
    rng: np.random.Generator, size: Tuple[int, int], class_names: Sequence[str] = SYNTHETIC_STUFF_CLASSES
) -> Tuple[np.ndarray, np.ndarray]:
    """One sample: (image uint8 (H, W, 3) RGB, label uint8 (H, W) with values in [0, K) or 255)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    label = _layout(rng, h, w, len(class_names))
    image = np.zeros((h, w, 3), dtype=np.float64)
    for cls in np.unique(label):  # one texture per class present (<= K), composited by the label map
        mask = label == cls
        image[mask] = _TEXTURES[class_names[cls]](rng, yy, xx)[mask]
    if rng.random() < 0.25:  # unlabelled clutter patch -> ignore
        ph, pw = max(2, h // 8), max(2, w // 8)
        y0, x0 = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        image[y0 : y0 + ph, x0 : x0 + pw] = rng.uniform(0, 255, size=(ph, pw, 3))
        label[y0 : y0 + ph, x0 : x0 + pw] = IGNORE_LABEL
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label.astype(np.uint8)


def _image_size(rng: np.random.Generator, image_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    if isinstance(image_size, int):
        # landscape images of varying aspect (1 to 1.25), so resizing and cropping have work to do
        return image_size, int(rng.integers(image_size, int(round(1.25 * image_size)) + 1))
    h, w = image_size
    return int(h), int(w)


def generate_synthetic_stuff(
    root: Union[str, os.PathLike],
    num_train: int = 200,
    num_val: int = 40,
    image_size: Union[int, Tuple[int, int]] = 128,
    seed: int = 0,
) -> Path:
    """Write the synthetic set under ``<root>/synthetic-stuff`` and return that folder.

    Args:
        root: dataset root (what ``DETECTRON2_DATASETS`` will point at).
        num_train / num_val: number of images in ``train2017`` / ``val2017``.
        image_size: an int gives height ``image_size`` and a random width in [1, 1.25] x that;
            a pair (H, W) gives that exact size.
        seed: images are a deterministic function of (seed, split, index).
    Existing files with the same names are overwritten; a ``classes.json`` lists the class names.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"num_train / num_val must be >= 0, got {num_train} / {num_val}")
    min_side = image_size if isinstance(image_size, int) else min(image_size)
    if min_side < 16:
        raise ValueError(f"image_size must be at least 16 px, got {image_size!r}")
    out = Path(root) / "synthetic-stuff"
    counts = {"train2017": num_train, "val2017": num_val}
    for split, split_id in _SPLITS:
        img_dir = out / "images" / split
        gt_dir = out / "annotations_detectron2" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for i in tqdm(range(counts[split]), desc=f"synthetic-stuff {split}", disable=counts[split] < 50):
            rng = np.random.default_rng([seed, split_id, i])
            image, label = synthesize_sample(rng, _image_size(rng, image_size))
            stem = f"{i:012d}"
            Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(gt_dir / f"{stem}.png")
    (out / "classes.json").write_text(json.dumps(list(SYNTHETIC_STUFF_CLASSES)))
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--root",
        default=os.environ.get("DETECTRON2_DATASETS", "datasets"),
        help="dataset root (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128, help="image height; width varies up to 1.25x")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = generate_synthetic_stuff(args.root, args.num_train, args.num_val, args.image_size, args.seed)
    print(f"wrote {args.num_train} + {args.num_val} images to {out}; use DETECTRON2_DATASETS={args.root} and "
          "DATASETS.TRAIN ('synthetic_stuff_train_sem_seg',) DATASETS.TEST ('synthetic_stuff_val_sem_seg',)")


if __name__ == "__main__":
    main()
