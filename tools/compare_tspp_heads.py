#!/usr/bin/env python
r"""Stage 1 (TSPP alone, Sec. 3.5) at tiny scale with each TSPP head, on the synthetic dataset.

    python tools/compare_tspp_heads.py --iters 1000 --dataset-root datasets_synthetic

Builds the tiny stage-1 model (``configs/tiny/sam_mi_tiny_stage1.yaml``, random CLIP), puts each TSPP head
in it as the prompter's head (``PaperTSPPHead``: the paper's, ``TSPPHead``: the earlier one), trains TSPP
alone with L_tspp for ``--iters`` iterations (AdamW, batches of 4 random 128 x 128 training crops, same
seed for both heads) and reports on the synthetic
validation set: M^text mIoU (argmax of the mask logits, upsampled to the labels), expected points per
image E[N_p] = sum clamp(p, 0, 1) beside the Eq. 3-5 targets' sum, the un-weighted L_mse and the parameter
count.  A CPU run of a few minutes; the numbers compare heads, they say nothing about full-scale mIoU.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--dataset-root", required=True, help="where the synthetic dataset is (generated if absent)")
    parser.add_argument("--heads", default="PaperTSPPHead,TSPPHead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ["DETECTRON2_DATASETS"] = args.dataset_root
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.modeling import build_model

    from sam_mi import add_sam_mi_config
    from sam_mi.data.dataset_mapper import SemanticDatasetMapper
    from sam_mi.data.synthetic import generate_synthetic_stuff
    from sam_mi.modeling.tspp import TSPPHead, tspp_losses, tspp_prob_targets
    from sam_mi.modeling.tspp_heads import PaperTSPPHead

    heads = {"PaperTSPPHead": PaperTSPPHead, "TSPPHead": TSPPHead}

    if not os.path.isdir(os.path.join(args.dataset_root, "synthetic-stuff")):
        generate_synthetic_stuff(args.dataset_root, num_train=200, num_val=40, image_size=128, seed=0)
    cfg = get_cfg()
    add_sam_mi_config(cfg)
    cfg.merge_from_file(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "configs/tiny/sam_mi_tiny_stage1.yaml"))
    cfg.MODEL.WEIGHTS = ""
    train_dicts = DatasetCatalog.get(cfg.DATASETS.TRAIN[0])
    val_dicts = DatasetCatalog.get(cfg.DATASETS.TEST[0])
    mapper = SemanticDatasetMapper(cfg, is_train=True)
    s = cfg.MODEL.SAM_MI
    print(f"{'head':14s} {'params':>7s} {'M^text mIoU':>11s} {'E[N_p]':>7s} {'target':>7s} {'L_mse':>8s} {'s/iter':>7s}")
    for name in args.heads.split(","):
        torch.manual_seed(args.seed)
        model = build_model(cfg)
        model.prompter.head = heads[name](hidden_dim=s.TSPP.HIDDEN_DIM, grid_size=s.TSPP.GRID_SIZE)
        for n, p in model.named_parameters():  # stage 1: TSPP alone (Sec. 3.5)
            p.requires_grad_(n.startswith("prompter."))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
        g = torch.Generator().manual_seed(args.seed)
        model.train()
        start = time.perf_counter()
        for _ in range(args.iters):
            batch = [mapper(train_dicts[int(i)]) for i in torch.randint(len(train_dicts), (4,), generator=g)]
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        per_iter = (time.perf_counter() - start) / max(args.iters, 1)
        model.eval()
        t = len(model.train_class_names)
        inter, union = torch.zeros(t), torch.zeros(t)
        points, targets, mses = [], [], []
        with torch.no_grad():
            for d in val_dicts:
                image = torch.as_tensor(read_image(d["file_name"], format="RGB").copy()).permute(2, 0, 1).float()
                label = torch.as_tensor(read_image(d["sem_seg_file_name"]).copy()).long()
                label = label[..., 0] if label.dim() == 3 else label
                dense, _ = model.clip.encode_image_dense(image[None])
                cost = model.cost_maps(dense, model.clip.encode_text(model.train_class_names))
                prob, logits = model.prompter(cost)
                pred = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0].argmax(0)
                valid = label != cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
                for c in range(t):
                    p_c, l_c = (pred == c) & valid, (label == c) & valid
                    inter[c] += (p_c & l_c).sum()
                    union[c] += (p_c | l_c).sum()
                target = tspp_prob_targets(label[None], s.TSPP.GRID_SIZE, s.TSPP.G_P, s.TSPP.M_P)
                points.append(prob.clamp(0, 1).sum().item())
                targets.append(target.clamp(0, 1).sum().item())
                mses.append(tspp_losses(prob, logits, label[None], target, 1.0)["loss_tspp_mse"].item())
        present = union > 0
        miou = (inter[present] / union[present]).mean().item() * 100
        n = sum(p.numel() for p in model.prompter.head.parameters())
        print(f"{name:14s} {n:7d} {miou:11.2f} {sum(points) / len(points):7.2f} {sum(targets) / len(targets):7.2f} "
              f"{sum(mses) / len(mses):8.4f} {per_iter:7.3f}", flush=True)


if __name__ == "__main__":
    main()
