#!/usr/bin/env python
"""Segment any images with any vocabulary and draw SAM-MI's stages (sam_mi.engine.SAMMIPredictor).

    python tools/predict.py --config-file configs/tiny/sam_mi_tiny_stage2.yaml --input img.jpg [more.png dir/] \
        --vocabulary "cat,dog,grass" --output out/ [--dump-figures] [MODEL.WEIGHTS model.pth ...]

Writes per image <name>_panel.png (image | TSPP probability + points | SAM masks | after SMAgg | prediction with a
legend) and <name>_pred.png (the colour-coded map); --dump-figures adds <name>_fig6_fig7.png and
<name>_figures.pt (aggregated cost maps before upsampling, guidance after high-frequency injection).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from detectron2.config import get_cfg
from PIL import Image
from tqdm import tqdm

from sam_mi import add_sam_mi_config
from sam_mi.engine.predictor import SAMMIPredictor, check_vocabulary, image_to_tensor
from sam_mi.utils.visualizer import colorize, draw_feature_maps, draw_panel, figure_maps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs):
    """Files given, and the images inside folders given (sorted); exits with a message when none is found."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                sys.exit(f"error: folder {item} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif os.path.isfile(item):
            files.append(item)
        else:
            sys.exit(f"error: input {item} does not exist")
    return files


def read_vocabulary(args):
    if args.vocabulary_json:
        try:
            with open(args.vocabulary_json) as f:
                names = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"error: cannot read --vocabulary-json {args.vocabulary_json}: {e}")
    else:
        names = [n for n in args.vocabulary.split(",")]
    try:
        return check_vocabulary(names)
    except ValueError as e:
        sys.exit(f"error: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--vocabulary", help='comma-separated class names, e.g. "cat,dog,grass"')
    group.add_argument("--vocabulary-json", help="a JSON list of class names")
    parser.add_argument("--output", required=True)
    parser.add_argument("--dump-figures", action="store_true", help="also write Fig. 6 / Fig. 7 maps")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args()

    files = list_images(args.input)
    vocabulary = read_vocabulary(args)
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    predictor = SAMMIPredictor(cfg, capture_figures=args.dump_figures)
    os.makedirs(args.output, exist_ok=True)
    failed = []
    for path in tqdm(files, desc="images", unit="img"):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:

            image = image_to_tensor(path).permute(1, 2, 0).numpy()
            pred = predictor(image, vocabulary)
        except (OSError, ValueError) as e:  # unreadable or unusable file: say which, go on with the others
            tqdm.write(f"skipped {path}: {e}")
            failed.append(path)
            continue
        Image.fromarray(colorize(pred.sem_seg, len(vocabulary))).save(os.path.join(args.output, f"{stem}_pred.png"))
        draw_panel(image, pred, os.path.join(args.output, f"{stem}_panel.png"), title=os.path.basename(path))
        if args.dump_figures:
            torch.save(pred.figures, os.path.join(args.output, f"{stem}_figures.pt"))
            top = torch.bincount(pred.sem_seg.flatten(), minlength=len(vocabulary)).argsort(descending=True)[:3]
            maps, titles = figure_maps(pred.figures, vocabulary, top.tolist())
            if maps:
                draw_feature_maps([np.asarray(m) for m in maps], titles,
                                  os.path.join(args.output, f"{stem}_fig6_fig7.png"))
    print(f"wrote {len(files) - len(failed)} panel(s) to {args.output}" + (f"; skipped {len(failed)}" if failed else ""))
    if failed and len(failed) == len(files):
        sys.exit(1)


if __name__ == "__main__":
    main()
