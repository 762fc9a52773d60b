"""Per-image random streams for TSPP's test-time point sampling (Eq. 2 draws points at random).

One generator seeded from (configured seed, image identity) per image makes an evaluation repeat exactly
across runs and machines, and independent of how the images are split over processes or batched: an
image's points depend on nothing but the image and the seed.  The same generator must not be shared by two
images (the order in which images reach a process would then change the points).

Image identity (:func:`image_key`): the *base name* of the input's ``file_name`` (e.g.
``ADE_val_00000001.jpg``).  It is the same whatever the dataset root, the machine or the number of GPUs;
the benchmarks' base names are unique within a dataset, and two images that did share one would only share
a random field, still deterministically.  Without a file name (e.g. the demo on an in-memory image) the key
is a SHA-256 of the image's shape, dtype and bytes.

Seeds are derived with SHA-256 (``hashlib``), not Python's ``hash`` (salted per process for strings).
"""
import hashlib
import os
from typing import Mapping, Union

import torch
from torch import Tensor

__all__ = ["image_key", "image_seed", "sampling_generator"]

_SEED_MASK = (1 << 63) - 1  # torch.Generator.manual_seed takes any int below 2^64; stay in int64 range


def image_key(inputs: Mapping) -> str:
    """The identity of one input dict (detectron2 format): basename of ``file_name``, else a content hash.

    Args:
        inputs: one element of the model's ``batched_inputs`` ("file_name" optional, "image" [C, H, W]).
    """
    file_name = inputs.get("file_name")
    if file_name:
        return os.path.basename(str(file_name).replace("\\", "/"))
    image = inputs.get("image")
    if not isinstance(image, Tensor):
        raise ValueError("cannot identify the image for seeding: give the input dict a 'file_name' or an 'image' tensor")
    data = image.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}|".encode())
    digest.update(data.numpy().tobytes() if data.dtype != torch.bfloat16 else data.float().numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def image_seed(base_seed: int, key: str) -> int:
    """Seed of one image's random stream: the first 8 bytes (little endian) of SHA-256("<base_seed>\\0<key>"),
    masked to 63 bits.  Pure: the same on every process, run and machine."""
    digest = hashlib.sha256(f"{int(base_seed)}\0{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


def sampling_generator(seed: int, device: Union[str, torch.device] = "cpu") -> torch.Generator:
    """A fresh generator seeded with ``seed`` on ``device``.

    Prefer the CPU (the default): TSPP draws one number per grid point (1024), and a CPU stream gives the
    same numbers on every machine, whereas a CUDA stream's values can depend on the GPU model (its kernels
    size their launch grid by the number of multiprocessors).  The samplers in ``tspp.py`` draw on the
    generator's device and move the result to the probability map's device, so either works.
    """
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))
