"""Pictures of a prediction in the paper's style: image | TSPP probability map with its points (Fig. 9) |
SAM's masks | masks after SMAgg | colour-coded prediction with a legend; and the Fig. 6 / Fig. 7 maps."""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """A fixed colour per class index, [num_classes, 3] uint8 (bright, seeded)."""
    rng = np.random.RandomState(seed)
    return (rng.uniform(0.15, 1.0, size=(num_classes, 3)) * 255).astype(np.uint8)


def _resize_masks(masks: Tensor, size) -> np.ndarray:
    if masks.numel() == 0:
        return np.zeros((0, *size), dtype=bool)
    return (F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5).numpy()


def overlay_masks(image: np.ndarray, masks: Optional[Tensor], alpha: float = 0.55) -> np.ndarray:
    """Each mask Bool[N, h, w] in its own colour over ``image`` HxWx3 uint8 (larger masks drawn first)."""
    out = image.astype(np.float32).copy()
    if masks is None or masks.shape[0] == 0:
        return image
    resized = _resize_masks(masks, image.shape[:2])
    order = np.argsort(-resized.reshape(len(resized), -1).sum(1))
    colors = palette(len(resized), seed=1)
    for i in order:  # per mask: a handful per image, each a vectorised blend
        m = resized[i]
        out[m] = (1 - alpha) * out[m] + alpha * colors[i]
    return out.astype(np.uint8)


def colorize(sem_seg: Tensor, num_classes: int) -> np.ndarray:
    """Class indices [H, W] -> colours HxWx3 uint8."""
    return palette(num_classes)[sem_seg.numpy().clip(0, num_classes - 1)]


def draw_panel(image: np.ndarray, prediction, path: str, title: str = "") -> None:
    """Write the five-panel picture of ``prediction`` (an ``sam_mi.engine.predictor.Prediction``) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    h, w = image.shape[:2]
    vocab: List[str] = prediction.vocabulary
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    axes[0].imshow(image)
    axes[0].set_title("image")
    if prediction.tspp_prob is not None:
        prob = F.interpolate(prediction.tspp_prob[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
        axes[1].imshow(image)
        axes[1].imshow(prob, cmap="jet", alpha=0.55)
    else:
        axes[1].imshow(image)
    if prediction.points is not None and len(prediction.points):
        pts = prediction.points.numpy()
        axes[1].scatter(pts[:, 0] * w, pts[:, 1] * h, s=10, c="white", edgecolors="black", linewidths=0.5)
    n_points = 0 if prediction.points is None else len(prediction.points)
    axes[1].set_title(f"TSPP probability, {n_points} points")
    n_sam = 0 if prediction.sam_masks is None else prediction.sam_masks.shape[0]
    n_masks = 0 if prediction.masks is None else prediction.masks.shape[0]
    axes[2].imshow(overlay_masks(image, prediction.sam_masks))
    axes[2].set_title(f"SAM masks ({n_sam})")
    axes[3].imshow(overlay_masks(image, prediction.masks))
    axes[3].set_title(f"after SMAgg ({n_masks})")
    axes[4].imshow(colorize(prediction.sem_seg, len(vocab)))
    axes[4].set_title("prediction")
    for ax in axes:
        ax.axis("off")
    present = sorted(set(prediction.sem_seg.unique().tolist()))
    colors = palette(len(vocab))
    handles = [Patch(color=colors[i] / 255.0, label=vocab[i]) for i in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(8, max(1, len(handles))), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95 if title else 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def draw_feature_maps(maps: Sequence[np.ndarray], titles: Sequence[str], path: str) -> None:
    """A row of 2-D maps (e.g. Fig. 6's per-class aggregated cost, Fig. 7's guidance energy) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3 * len(maps), 3.2), squeeze=False)
    for ax, m, t in zip(axes[0], maps, titles):
        ax.imshow(m, cmap="jet")
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def figure_maps(figures: dict, vocabulary: Sequence[str], top_classes: Sequence[int]):
    """Fig. 6: channel-mean of the aggregated cost [T, h, w, C] for ``top_classes``; Fig. 7: channel L2 norm
    of each injected guidance map [C, H, W]. Returns (maps, titles)."""
    maps, titles = [], []
    cost = figures.get("aggregated_cost")
    if cost is not None:
        for c in top_classes:
            if c < cost.shape[0]:
                maps.append(cost[c].mean(-1).numpy())
                titles.append(f"aggregated cost: {vocabulary[c]}")
    for key in sorted(k for k in figures if k.startswith("guidance_injected")):
        maps.append(torch.linalg.vector_norm(figures[key], dim=0).numpy())
        titles.append(key.replace("_", " "))
    return maps, titles
