#!/usr/bin/env python
"""Convert a CAT-Seg v2 checkpoint (model_base.pth / model_large.pth) to SAM-MI's key layout.

    python tools/convert_catseg_checkpoint.py --input model_base.pth --output catseg_vitb_sammi.pth

The output is ``{"model": state_dict}`` for detectron2's DetectionCheckpointer (MODEL.WEIGHTS); loading it
into SAM-MI leaves only the SAM-MI-specific modules (TSPP, DMI) missing.  Key mapping: catseg.md Sec. 3,
implemented in ``sam_mi.utils.catseg_compat``.
"""
import argparse
import os
import sys
from typing import List, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from sam_mi.utils.catseg_compat import convert_catseg_state_dict, unwrap_checkpoint  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="CAT-Seg v2 checkpoint (.pth)")
    parser.add_argument("--output", required=True, help="where to write the SAM-MI checkpoint (.pth)")
    parser.add_argument("--allow-unmapped", action="store_true", help="drop keys with no SAM-MI counterpart")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not os.path.isfile(args.input):
        raise SystemExit(
            f"{args.input}: no such file.  CAT-Seg v2 weights: https://huggingface.co/spaces/hamacojr/"
            "CAT-Seg-weights/resolve/main/model_base.pth (ViT-B/16) or .../model_large.pth (ViT-L/14@336)"
        )
    # detectron2 checkpoints may hold non-tensor metadata (iteration, optimizer state): full unpickling.
    checkpoint = torch.load(args.input, map_location="cpu", weights_only=False)
    state_dict = unwrap_checkpoint(checkpoint)
    try:
        converted, report = convert_catseg_state_dict(state_dict, allow_unmapped=args.allow_unmapped)
    except ValueError as e:  # v1 checkpoint / foreign keys: the message says what to do
        raise SystemExit(f"{args.input}: {e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "__author__": "CAT-Seg (converted by sam-mi)"}, args.output)
    num_params = sum(v.numel() for v in converted.values())
    print(f"Converted {args.input} -> {args.output}: {len(converted)} of {len(state_dict)} keys, {num_params:,} values")
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
