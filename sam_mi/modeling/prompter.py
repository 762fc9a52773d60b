"""The prompter stage (Fig. 2, Sec. 3.2): TSPP's head on the cost maps, then the point prompts given to SAM.

``PROMPTER_REGISTRY`` holds prompter stages (built from ``MODEL.SAM_MI.TSPP.NAME``); ``TSPP_HEAD_REGISTRY``
holds the networks that turn cost maps S into (sampling probabilities, M^text logits), chosen by
``MODEL.SAM_MI.TSPP.HEAD_NAME``. A new head is one class with the contract of ``TSPPHead``, built as
``Head(hidden_dim=, grid_size=, class_chunk=)`` (``class_chunk``: classes to process at a time for memory,
0 = all; a head may ignore it only if its memory does not grow with T x h x w x C) with
``forward(cost [B,T,h,w]) -> (prob [B,G,G] >= 0, mask_logits [B,T,h,w])``, and one
``TSPP_HEAD_REGISTRY.register()``.
"""
from typing import Dict, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from .tspp import TSPPHead, grid_points, random_points, sample_points, tspp_losses, tspp_prob_targets
from .tspp_heads import PaperTSPPHead

PROMPTER_REGISTRY = Registry("SAM_MI_PROMPTER")
PROMPTER_REGISTRY.__doc__ = "Prompter stages: cost maps -> sampling probabilities, M^text and point prompts."
TSPP_HEAD_REGISTRY = Registry("SAM_MI_TSPP_HEAD")
TSPP_HEAD_REGISTRY.__doc__ = "TSPP networks: cost maps [B,T,h,w] -> (prob [B,G,G], mask logits [B,T,h,w])."
TSPP_HEAD_REGISTRY.register(PaperTSPPHead)  # Fig. 3c: MLP + attention block, two linear heads (default)
TSPP_HEAD_REGISTRY.register(TSPPHead)  # our earlier head: pooled class context + 3x3 conv probability branch

#: Table 5's prompting strategies: TSPP's learned probabilities, the uniform grid, random grid points.
SAMPLING_MODES = ("learned", "grid", "random")


@PROMPTER_REGISTRY.register()
class TSPPPrompter(nn.Module):
    """Text-guided Sparse Point Prompter (Sec. 3.2): TSPP's head, its loss and the point sampling.

    ``head`` None is the extra "no TSPP head" ablation: M^text then comes from the raw cost maps and only
    the grid / random strategies can prompt SAM.
    """

    @configurable
    def __init__(
        self,
        *,
        head: Optional[nn.Module],
        sampling: str = "learned",
        grid_size: int = 32,
        g_p: int = 5,
        m_p: int = 10,
        num_random_points: int = 64,
        lambda_mse: float = 0.5,
        calibrate_points: float = 0.0,
        ignore_value: int = 255,
    ) -> None:
        """
        Args:
            head: the TSPP network (registry ``TSPP_HEAD_REGISTRY``) or None.
            sampling: "learned" | "grid" | "random" (Table 5).
            grid_size: d_h = d_w of the point grid (Eq. 2). g_p, m_p: density of the targets (Eq. 5).
            num_random_points: points of the "random" strategy (Table 5: 64).
            lambda_mse: weight of L_mse in L_tspp (Sec. 3.2).
            calibrate_points: > 0 rescales each probability map to sum to this many expected points. Only for
                latency benchmarks with random weights, where an untrained head's point count is arbitrary.
        """
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"MODEL.SAM_MI.TSPP.SAMPLING must be one of {SAMPLING_MODES}, got {sampling!r}")
        if sampling == "learned" and head is None:
            raise ValueError("learned point sampling needs TSPP: enable MODEL.SAM_MI.TSPP or set SAMPLING grid/random")
        self.head = head
        self.sampling = sampling
        self.grid_size, self.g_p, self.m_p = grid_size, g_p, m_p
        self.num_random_points = num_random_points
        self.lambda_mse = lambda_mse
        self.calibrate_points = float(calibrate_points)
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg) -> Dict:
        t = cfg.MODEL.SAM_MI.TSPP
        head = None
        if t.ENABLED:
            head = TSPP_HEAD_REGISTRY.get(t.HEAD_NAME)(
                hidden_dim=t.HIDDEN_DIM, grid_size=t.GRID_SIZE, class_chunk=t.CLASS_CHUNK
            )
        return {
            "head": head,
            "sampling": t.SAMPLING,
            "grid_size": t.GRID_SIZE,
            "g_p": t.G_P,
            "m_p": t.M_P,
            "num_random_points": t.RANDOM_POINTS,
            "lambda_mse": t.LAMBDA_MSE,
            "calibrate_points": t.CALIBRATE_POINTS,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        }

    def forward(self, cost: Tensor) -> Tuple[Optional[Tensor], Tensor]:
        """cost maps S [B,T,h,w] -> (prob [B,G,G] or None without a head, M^text logits [B,T,h,w])."""
        if self.head is None:
            return None, cost
        prob, mask_logits = self.head(cost)
        if self.calibrate_points > 0:
            prob = prob * (self.calibrate_points / prob.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6))
        return prob, mask_logits

    def losses(self, prob: Tensor, mask_logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """L_tspp = L_ce^mask + lambda_mse L_mse (Sec. 3.2) for labels [B,H,W], targets from Eq. 3-5."""
        prob_targets = tspp_prob_targets(targets, self.grid_size, self.g_p, self.m_p, self.ignore_value)
        return tspp_losses(prob, mask_logits, targets, prob_targets, self.lambda_mse, self.ignore_value)

    def sample(self, prob: Optional[Tensor], device: torch.device,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Point prompts for one image as (x, y) in [0, 1], on ``device`` (Table 5's three strategies).

        "learned" draws from TSPP's map ``prob`` [G, G] (Eq. 2); "grid" returns all G^2 cell centres;
        "random" draws ``num_random_points`` distinct grid points uniformly.
        """
        if self.sampling == "learned":
            return sample_points(prob.detach(), generator=generator).to(device)
        if self.sampling == "grid":
            return grid_points(self.grid_size).to(device)
        return random_points(self.grid_size, self.num_random_points, generator=generator).to(device)


def build_prompter(cfg) -> TSPPPrompter:
    """The prompter stage named by ``MODEL.SAM_MI.TSPP.NAME``."""
    return PROMPTER_REGISTRY.get(cfg.MODEL.SAM_MI.TSPP.NAME)(cfg)
