#!/usr/bin/env python
"""Convert a CAT-Seg v2 checkpoint (model_base.pth / model_large.pth) to SAM-MI's key layout.

    python tools/convert_catseg_checkpoint.py --input model_base.pth --output catseg_vitb_sammi.pth

The output is ``{"model": state_dict}`` for detectron2's DetectionCheckpointer (MODEL.WEIGHTS); loading it
into SAM-MI leaves only the SAM-MI-specific modules (TSPP, DMI) missing.  Key mapping: implemented in
``sam_mi.utils.catseg_compat`` (CAT-Seg's names: cvlab-kaist/CAT-Seg cat_seg/cat_seg_model.py).

The input is loaded safely (tensors and plain containers only).  A checkpoint that also pickles Python
objects (some detectron2 checkpoints hold optimizer or scheduler objects) is refused with a message;
``--trust-pickle`` loads it with full unpickling, which can run code from the file: only for files from a
source you trust.  The output is written atomically.
"""
import argparse
import os
import sys
from typing import List, Optional

import torch

from sam_mi.utils.atomic_io import atomic_write
from sam_mi.utils.catseg_compat import convert_catseg_state_dict, unwrap_checkpoint
from sam_mi.utils.checkpoint_io import CheckpointFileError, load_checkpoint_file

_EXPECTED = "a CAT-Seg v2 checkpoint (model_base.pth / model_large.pth, {'model': state_dict})"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="CAT-Seg v2 checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="where to write the SAM-MI checkpoint (.pth)")
    parser.add_argument("--allow-unmapped", action="store_true", help="drop keys with no SAM-MI counterpart")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="if the safe load refuses the file, unpickle it fully (runs code from the file: "
                             "only for files from a source you trust)")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.input):
        raise SystemExit(
            f"{args.input}: no such file.  CAT-Seg v2 weights: https://huggingface.co/spaces/hamacojr/"
            "CAT-Seg-weights/resolve/main/model_base.pth (ViT-B/16) or .../model_large.pth (ViT-L/14@336)"
        )
    try:
        checkpoint = load_checkpoint_file(
            args.input, "--input", _EXPECTED, trust_pickle=args.trust_pickle,
            unsafe_hint="If you trust the file's origin, re-run with --trust-pickle to unpickle it fully",
        )
        state_dict = unwrap_checkpoint(checkpoint)
    except ValueError as e:  # CheckpointFileError names the file; unwrap_checkpoint's message does not
        raise SystemExit(str(e) if isinstance(e, CheckpointFileError) else f"{args.input}: {e}")
    try:
        converted, report = convert_catseg_state_dict(state_dict, allow_unmapped=args.allow_unmapped)
    except ValueError as e:  # v1 checkpoint / foreign keys: the message says what to do
        raise SystemExit(f"{args.input}: {e}")
    with atomic_write(args.output, "wb") as f:
        torch.save({"model": converted, "__author__": "CAT-Seg (converted by sam-mi)"}, f)
    num_params = sum(v.numel() for v in converted.values())
    print(f"Converted {args.input} -> {args.output}: {len(converted)} of {len(state_dict)} keys, {num_params:,} values")
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
