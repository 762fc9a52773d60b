"""The SAMMI meta-architecture (Fig. 2): it wires the stages, computes the losses and runs inference.

    CLIP -> cost maps S -> prompter (TSPP, Sec. 3.2) -> mask generator (frozen SAM) -> SMAgg (Sec. 3.3)
         -> mask-injected cost head (DMI, Sec. 3.4 + CAT-Seg aggregation) -> class logits

Each stage is built by its registry from the config (prompter.py, sam/registry.py, cost_head.py). With the
SAM parts off it is the CAT-Seg (v2) baseline, and a CAT-Seg checkpoint converted by
``tools/convert_catseg_checkpoint.py`` loads into it.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn

from ..data.vocabulary import resolve_vocabulary, validate_vocabulary
from ..utils.events import storage_put
from ..utils.stage_timer import stage
from .aggregator import cost_volume
from .checkpoint_keys import register_checkpoint_hooks
from .clip import DenseCLIP, build_dense_clip
from .cost_head import build_cost_head
from .inference import sliding_window_boxes, sliding_window_inference, whole_image_inference
from .losses import per_class_bce
from .mask_proposals import MaskProposals, aggregate_masks, propose_masks, propose_masks_in_views, region_masks
from .prompter import build_prompter
from .seeding import image_key, image_seed, sampling_generator
from .sam import build_mask_generator


@META_ARCH_REGISTRY.register()
class SAMMI(nn.Module):
    """SAM-MI (and, with its SAM parts off, CAT-Seg).

    Inputs follow detectron2: a list of dicts with "image" (uint8 [3, H, W] RGB) and, for training,
    "sem_seg" (long [H, W], ``ignore_value`` for unlabeled). Inference returns one dict per image with
    "sem_seg" (class scores [T, height, width]) and "sam_mi" (points, SAM masks and injected masks per image;
    ``injected`` is False when the image fell back to the un-injected path).
    """

    @configurable
    def __init__(
        self,
        *,
        clip: DenseCLIP,
        cost_head: nn.Module,
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        prompter: Optional[nn.Module] = None,
        mask_generator: Optional[nn.Module] = None,
        train_stage: int = 2,
        lambda_tspp: float = 0.1,
        alpha_sma: Optional[float] = 0.5,
        sliding_window: bool = False,
        window_size: int = 384,
        window_overlap: float = 0.333,
        out_resolution: int = 640,
        size_divisibility: int = 32,
        sam_per_view: bool = False,
        scores: str = "cost_head",
        ignore_value: int = 255,
        inference_seed: int = 0,
        inference_amp: bool = False,
        oracle_masks: bool = False,
        oracle_mirrored: bool = False,
    ):
        """
        Args:
            clip: dense CLIP (both encoders). cost_head: DMI + CAT-Seg aggregation (cost_head.py).
            train_class_names / test_class_names: vocabularies; ``set_vocabulary`` changes the test one.
            prompter: TSPP head + point sampling (prompter.py); None without TSPP and SAM (CAT-Seg).
            mask_generator: frozen SAM or a variant (sam/registry.py); None switches SAM (and DMI) off.
            train_stage: 1 trains TSPP alone with L_tspp; 2 trains everything with L_ce + lambda_tspp L_tspp.
            alpha_sma: SMAgg's threshold (Eq. 7); None skips SMAgg ("w/o SMAgg", Table 3).
            sliding_window: the OVSS evaluation protocol (4 crops + 1 global view of a 640x640 resize);
                otherwise CAT-Seg's whole-image path, padding the image to a multiple of ``size_divisibility``.
            sam_per_view: in the sliding window, run SAM's image encoder on every view like CLIP instead of once
                on the whole image (the paper's "1024x1024 for SAM", Sec. 4.1); for comparison.
            scores: "cost_head" scores the model's prediction, "tspp" TSPP's M^text logits (Table 8).
            inference_seed: base seed of the point sampling at test time; each image draws from its own stream
                seeded by (inference_seed, its file name), so results repeat across runs and GPU counts.
            inference_amp: autocast inference (float16 on CUDA, bfloat16 on CPU).
            oracle_masks: a diagnostic: the ground truth's regions replace SAM's masks (then SMAgg and DMI
                run as usual), showing the ceiling of mask injection on a dataset. Needs "sem_seg" in the
                inputs (training, or whole-image evaluation with a mapper that keeps the labels).
            oracle_mirrored: with ``oracle_masks``, the regions mirrored left-right (the control: the same masks
                in the wrong places).
        """
        super().__init__()
        if train_stage not in (1, 2):
            raise ValueError(f"MODEL.SAM_MI.TRAIN_STAGE must be 1 or 2, got {train_stage}")
        has_head = prompter is not None and prompter.head is not None
        if train_stage == 1 and not has_head:
            raise ValueError("TRAIN_STAGE 1 trains TSPP alone: set MODEL.SAM_MI.TSPP.ENABLED True")
        if mask_generator is not None and prompter is None:
            raise ValueError("SAM needs point prompts: build SAMMI with a prompter (MODEL.SAM_MI.TSPP.NAME)")
        if getattr(cost_head, "injects", False) and mask_generator is None:
            raise ValueError("DMI injects SAM masks: enable MODEL.SAM_MI.SAM or switch DMI off")
        self.clip = clip
        self.prompter = prompter
        self.mask_generator = mask_generator
        self.cost_head = cost_head
        register_checkpoint_hooks(self)
        self.train_stage = train_stage
        self.lambda_tspp = lambda_tspp
        self.alpha_sma = alpha_sma
        self.sliding_window = sliding_window
        self.window_size, self.window_overlap, self.out_resolution = window_size, window_overlap, out_resolution
        self.size_divisibility = size_divisibility
        self.sam_per_view = sam_per_view
        if scores not in ("cost_head", "tspp") or (scores == "tspp" and not has_head):
            raise ValueError(f"MODEL.SAM_MI.INFERENCE.SCORES must be 'cost_head' or 'tspp' (with TSPP on), got {scores!r}")
        self.scores = scores
        self.ignore_value = ignore_value
        self.inference_seed = inference_seed
        self.inference_amp = inference_amp
        self.oracle_masks = oracle_masks
        self.oracle_mirrored = oracle_mirrored
        self.train_class_names = list(train_class_names)
        self.set_vocabulary(test_class_names)
        if train_stage == 1:  # Sec. 3.5 stage 1: only TSPP's parameters are updated.
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("prompter."))

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s = cfg.MODEL.SAM_MI
        clip = build_dense_clip(cfg)
        use_sam = s.SAM.ENABLED
        train_names = _vocabulary(cfg, cfg.DATASETS.TRAIN)
        return {
            "clip": clip,
            "cost_head": build_cost_head(cfg, clip.width, clip.embed_dim, clip.feature_size),
            "train_class_names": train_names,
            "test_class_names": _vocabulary(cfg, cfg.DATASETS.TEST) if len(cfg.DATASETS.TEST) else train_names,
            "prompter": build_prompter(cfg) if s.TSPP.ENABLED or use_sam else None,
            "mask_generator": build_mask_generator(cfg) if use_sam else None,
            "train_stage": s.TRAIN_STAGE,
            "lambda_tspp": s.TSPP.LOSS_WEIGHT,
            "alpha_sma": s.SMAGG.ALPHA_SMA if s.SMAGG.ENABLED else None,
            "sliding_window": s.INFERENCE.SLIDING_WINDOW,
            "window_size": s.INFERENCE.WINDOW_SIZE,
            "window_overlap": s.INFERENCE.WINDOW_OVERLAP,
            "out_resolution": s.INFERENCE.OUT_RESOLUTION,
            "size_divisibility": s.INFERENCE.SIZE_DIVISIBILITY,
            "sam_per_view": s.INFERENCE.SAM_PER_VIEW,
            "scores": s.INFERENCE.SCORES,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "inference_seed": cfg.SEED if cfg.SEED >= 0 else 0,
            "inference_amp": s.INFERENCE.AMP,
            "oracle_masks": s.SAM.ORACLE_MASKS,
            "oracle_mirrored": s.SAM.ORACLE_MIRRORED,
        }

    @property
    def device(self) -> torch.device:
        return self.cost_head.upsample1.weight.device

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Set the classes predicted at test time (one cached text embedding per vocabulary)."""
        self.test_class_names = validate_vocabulary(list(class_names), "SAMMI.set_vocabulary")

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict], keep_intermediates: bool = False):
        """Losses (training) or one result per input (``inference_one``; ``keep_intermediates`` at test time)."""
        for x in batched_inputs:
            check_image(x["image"])
        if self.training:
            images = torch.stack([x["image"].to(self.device) for x in batched_inputs]).float()
            targets = torch.stack([x["sem_seg"].to(self.device) for x in batched_inputs]).long()
            return self.losses(images, targets)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.inference_mode(), torch.autocast(self.device.type, amp_dtype, enabled=self.inference_amp):
            return [self.inference_one(x, keep_intermediates) for x in batched_inputs]

    def losses(self, images: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """Training losses for images [B,3,H,W] (0-255) and labels [B,H,W] (Sec. 3.5)."""
        out = self.predict(images, self.train_class_names, stage1=self.train_stage == 1,
                           targets=self.oracle_labels(targets))
        losses = {}
        if out.get("tspp_prob") is not None:
            weight = 1.0 if self.train_stage == 1 else self.lambda_tspp
            tspp = self.prompter.losses(out["tspp_prob"], out["tspp_logits"], targets)
            losses.update({k: v * weight for k, v in tspp.items()})
            if self.prompter.lambda_mse > 0:  # Table 8 reports L_mse un-weighted
                storage_put("tspp/l_mse", [float(tspp["loss_tspp_mse"].detach()) / self.prompter.lambda_mse])
        if self.train_stage == 2:
            losses["loss_sem_seg"] = per_class_bce(out["logits"], targets, self.ignore_value)
            if out["masks"] is not None:
                storage_put("sam_mi/num_points", out["masks"].num_points)
                storage_put("sam_mi/num_masks", out["masks"].num_masks)
        return losses

    def oracle_labels(self, labels: Tensor) -> Optional[Tensor]:
        """The labels [B,H,W] the oracle's masks come from (None without oracle masks), mirrored left-right with
        ``oracle_mirrored``: here, before whole-image inference pads them, so that they stay on the image."""
        if not self.oracle_masks:
            return None
        return labels.flip(-1) if self.oracle_mirrored else labels

    def inference_one(self, x: Dict, keep_intermediates: bool = False) -> Dict:
        """Scores [T, height, width] and SAM-MI's counts for one input dict; with ``keep_intermediates`` also
        the forward's intermediate results ("intermediates": the dict of :meth:`predict` for the first view)."""
        image = x["image"].to(self.device).float()
        height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
        stats: Dict[str, List[int]] = {"num_points": [], "num_sam_masks": [], "num_masks": []}
        # labels go to the device only when the oracle needs them (not on every evaluated image)
        targets = None
        if self.oracle_masks and "sem_seg" in x:
            targets = self.oracle_labels(x["sem_seg"].to(self.device)[None])
        # Eq. 2's sampling at test time: one stream per image, the same in every run and on any number of GPUs
        generator = sampling_generator(image_seed(self.inference_seed, image_key(x)))
        frames = None  # SAM once per image: the views' boxes in the image
        if self.sliding_window and not self.sam_per_view and self.mask_generator is not None:
            boxes = sliding_window_boxes(tuple(image.shape[-2:]), self.window_size, self.window_overlap,
                                         self.out_resolution)
            frames = (image, boxes)
        captured: List[Dict] = []

        def predict(views: Tensor) -> Tensor:
            labels = targets
            if labels is not None and views.shape[-2:] != labels.shape[-2:]:
                if self.sliding_window:
                    raise ValueError("MODEL.SAM_MI.SAM.ORACLE_MASKS needs labels in the frame of each view: use "
                                     "whole-image inference (MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW False)")
                pad = (0, views.shape[-1] - labels.shape[-1], 0, views.shape[-2] - labels.shape[-2])
                labels = F.pad(labels, pad, value=self.ignore_value)  # the whole-image path's padding
            if self.scores == "tspp":  # M^text alone: stage 1's output, no SAM needed
                return self.predict(views, self.test_class_names, stage1=True)["tspp_logits"]
            out = self.predict(views, self.test_class_names, targets=labels, keep_intermediates=keep_intermediates,
                               generator=generator, frames=frames)
            if keep_intermediates and not captured:
                captured.append(out)
            if out["masks"] is not None:
                for k in stats:
                    stats[k].extend(getattr(out["masks"], k))
            return out["logits"]

        if self.sliding_window:
            scores = sliding_window_inference(
                predict, image, self.window_size, self.window_overlap, self.out_resolution, (height, width)
            )
        else:
            pad_value = self.clip.pixel_mean.view(3)  # zero after CLIP's normalisation, as CAT-Seg pads
            scores = whole_image_inference(predict, image, self.size_divisibility, pad_value, (height, width))
        summary = {k: sum(v) for k, v in stats.items()}
        summary["injected"] = summary["num_masks"] > 0 and self.cost_head.injects
        result = {"sem_seg": scores, "sam_mi": summary}
        if keep_intermediates:
            result["intermediates"] = captured[0]
        return result

    def predict(self, images: Tensor, class_names: Sequence[str], stage1: bool = False,
                targets: Optional[Tensor] = None, keep_intermediates: bool = False,
                generator: Optional[torch.Generator] = None, frames: Optional[tuple] = None) -> Dict:
        """One forward pass over images [B,3,H,W] (0-255 RGB); ``targets`` [B,H,W] only for oracle masks,
        ``generator`` drives the point sampling (None: the global stream, as in training); ``frames`` =
        (original image [3,H,W], boxes [B,4]) when ``images`` are views of one image that SAM sees whole.

        Returns "logits" [B,T,4h,4w] (absent in stage 1), "tspp_prob" [B,G,G] and "tspp_logits" [B,T,h,w]
        (when TSPP is on) and "masks" (``MaskProposals`` or None).
        """
        # Stage 1 freezes CLIP, so its features need no graph.
        with stage("clip"), torch.set_grad_enabled(torch.is_grad_enabled() and not stage1):
            dense, guidance = self.clip.encode_image_dense(images)
            text = self.clip.encode_text(class_names)  # [T, P, D]
        out: Dict = {"masks": None}
        class_logits = None
        if self.prompter is not None:
            with stage("tspp"):
                out["tspp_prob"], class_logits = self.prompter(self.cost_maps(dense, text))
            out["tspp_logits"] = class_logits if self.prompter.head is not None else None
        if stage1:
            return out
        if self.mask_generator is not None:
            out["masks"] = self.propose_masks(images, out["tspp_prob"], class_logits, tuple(dense.shape[-2:]),
                                              targets, keep_intermediates, generator, frames)
        masks = out["masks"].masks if out["masks"] is not None else None
        out["logits"] = self.cost_head(dense, guidance, text, masks)
        return out

    def propose_masks(self, images: Tensor, prob: Optional[Tensor], class_logits: Tensor, grid: tuple,
                      targets: Optional[Tensor] = None, keep_intermediates: bool = False,
                      generator: Optional[torch.Generator] = None, frames: Optional[tuple] = None) -> MaskProposals:
        """Prompts -> SAM -> SMAgg for a batch; masks at the decoder's resolution (4h x 4w)."""
        out_size = (4 * grid[0], 4 * grid[1])
        if self.oracle_masks:
            if targets is None:
                raise ValueError("MODEL.SAM_MI.SAM.ORACLE_MASKS needs the ground truth: the inputs must carry "
                                 "'sem_seg' (a test mapper that keeps the labels)")
            with stage("sam_decoding"):
                regions = [region_masks(t, out_size, self.ignore_value) for t in targets]
            no_points = [images.new_zeros(0, 2) for _ in regions]
            return aggregate_masks(regions, no_points, class_logits, out_size, self.alpha_sma, keep_intermediates)
        sample = lambda i: self.prompter.sample(None if prob is None else prob[i], images.device, generator)  # noqa
        if frames is not None:
            return propose_masks_in_views(self.mask_generator, frames[0], frames[1], sample, class_logits, out_size,
                                          self.alpha_sma, keep_intermediates, use_cache=not self.training)
        return propose_masks(
            self.mask_generator,
            images,
            sample,
            class_logits,
            out_size=out_size,
            alpha_sma=self.alpha_sma,
            keep_intermediates=keep_intermediates,
            use_cache=not self.training,  # SAM's embedding cache: never for augmented training crops
        )

    def cost_maps(self, dense: Tensor, text: Tensor) -> Tensor:
        """Cosine cost maps S [B, T, h, w] (Sec. 3.1) from dense [B,D,h,w] and text [T,P,D] (templates averaged).

        The image side is detached: TSPP must not move CLIP's visual encoder (Sec. 3.2); the text side keeps
        its gradient."""
        text_b = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
        return cost_volume(dense.detach(), text_b).mean(dim=2)


def check_image(image: Tensor) -> None:
    """Reject what is not a [3, H, W] RGB image before it reaches CLIP/SAM's convolutions."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(
            f"SAMMI expects each input 'image' as a [3, H, W] RGB tensor (0-255), got {shape}; read images "
            "with detectron2's read_image(path, format='RGB') (INPUT.FORMAT RGB), which also converts "
            "grayscale/RGBA files"
        )


def _vocabulary(cfg, dataset_names: Sequence[str]) -> List[str]:
    """Class names from MODEL.SAM_MI.VOCABULARY_JSON, else from the first dataset's metadata, validated once
    (sam_mi/data/vocabulary.py: unique names, as many as the dataset's label ids)."""
    return resolve_vocabulary(dataset_names[0] if len(dataset_names) else None, cfg.MODEL.SAM_MI.VOCABULARY_JSON)
