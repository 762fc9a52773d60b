"""The SAMMI meta-architecture: CLIP cost maps -> TSPP -> SAM -> SMAgg -> DMI -> CAT-Seg aggregation (Fig. 2).

With TSPP, SAM and DMI switched off it is the CAT-Seg (v2) baseline, and a CAT-Seg checkpoint converted by
``tools/convert_catseg_checkpoint.py`` loads into it.
"""
import json
import logging
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn

from ..data.vocabulary import dataset_vocabulary
from .aggregator import Aggregator, cost_volume
from .clip import DenseCLIP
from .dmi import HighFrequencyInjection, LowFrequencyInjection
from .inference import sliding_window_inference, whole_image_scores
from .mask_injection import SAMPLING_MODES, generate_injection_masks, resize_masks
from .sam import build_mask_generator
from .tspp import TSPPHead, tspp_losses, tspp_prob_targets

logger = logging.getLogger(__name__)


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
        aggregator: Aggregator,
        upsample_dims: Sequence[int],
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        tspp: Optional[TSPPHead] = None,
        sam: Optional[nn.Module] = None,
        dmi_low: Optional[LowFrequencyInjection] = None,
        dmi_high: Optional[nn.ModuleList] = None,
        train_stage: int = 2,
        sampling: str = "learned",
        grid_size: int = 32,
        g_p: int = 5,
        m_p: int = 10,
        num_random_points: int = 64,
        lambda_mse: float = 0.5,
        lambda_tspp: float = 0.1,
        smagg: bool = True,
        alpha_sma: float = 0.5,
        sliding_window: bool = False,
        window_size: int = 384,
        window_overlap: float = 0.333,
        out_resolution: int = 640,
        ignore_value: int = 255,
        inference_seed: int = 0,
        inference_amp: bool = False,
    ):
        """
        Args:
            clip: dense CLIP (both encoders). aggregator: CAT-Seg cost aggregation.
            upsample_dims: channels of the two upsampled guidance maps (CAT-Seg: 256, 128).
            train_class_names / test_class_names: vocabularies; ``set_vocabulary`` changes the test one.
            tspp / sam / dmi_low / dmi_high: SAM-MI's modules; None switches each off (ablations).
            train_stage: 1 trains TSPP alone with L_tspp; 2 trains everything with L_ce + lambda_tspp L_tspp.
            sampling: "learned" | "grid" | "random" prompts for SAM (Table 5).
            smagg: merge SAM masks with TSPP's text masks before injection (Eq. 6-7).
            sliding_window: the OVSS evaluation protocol (4 crops + 1 global view of a 640x640 resize).
            inference_seed: seed of the point sampling at test time, so evaluation is repeatable.
            inference_amp: autocast inference (float16 on CUDA, bfloat16 on CPU).
        """
        super().__init__()
        if train_stage not in (1, 2):
            raise ValueError(f"MODEL.SAM_MI.TRAIN_STAGE must be 1 or 2, got {train_stage}")
        if train_stage == 1 and tspp is None:
            raise ValueError("TRAIN_STAGE 1 trains TSPP alone: set MODEL.SAM_MI.TSPP.ENABLED True")
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"MODEL.SAM_MI.TSPP.SAMPLING must be one of {SAMPLING_MODES}, got {sampling!r}")
        if sampling == "learned" and sam is not None and tspp is None:
            raise ValueError("learned point sampling needs TSPP: enable MODEL.SAM_MI.TSPP or set SAMPLING grid/random")
        if (dmi_low is not None or dmi_high is not None) and sam is None:
            raise ValueError("DMI injects SAM masks: enable MODEL.SAM_MI.SAM or switch DMI off")
        self.clip = clip
        width = clip.width
        # CAT-Seg's guidance upsampling of the two intermediate CLIP blocks (names kept for checkpoints).
        self.upsample1 = nn.ConvTranspose2d(width, upsample_dims[0], kernel_size=2, stride=2)
        self.upsample2 = nn.ConvTranspose2d(width, upsample_dims[1], kernel_size=4, stride=4)
        self.aggregator = aggregator
        self.tspp = tspp
        self.sam = sam
        if sam is not None:
            # SAM is frozen and always comes from MODEL.SAM_MI.SAM.CHECKPOINT: keep its weights (641M for
            # SAM-H) out of the checkpoints SAM-MI writes, and do not report them missing when loading.
            self.register_state_dict_post_hook(_drop_sam_keys)
            self.register_load_state_dict_post_hook(_ignore_missing_sam_keys)
        self.dmi_low = dmi_low
        self.dmi_high = dmi_high
        self.train_stage = train_stage
        self.sampling = sampling
        self.grid_size, self.g_p, self.m_p = grid_size, g_p, m_p
        self.num_random_points = num_random_points
        self.lambda_mse, self.lambda_tspp = lambda_mse, lambda_tspp
        self.smagg, self.alpha_sma = smagg, alpha_sma
        self.sliding_window = sliding_window
        self.window_size, self.window_overlap, self.out_resolution = window_size, window_overlap, out_resolution
        self.ignore_value = ignore_value
        self.inference_seed = inference_seed
        self.inference_amp = inference_amp
        self.train_class_names = list(train_class_names)
        self.set_vocabulary(test_class_names)
        if train_stage == 1:
            # Sec. 3.5 stage 1: only TSPP's parameters are updated.
            for name, p in self.named_parameters():
                p.requires_grad_(name.startswith("tspp."))

    @classmethod
    def from_config(cls, cfg) -> Dict:
        s = cfg.MODEL.SAM_MI
        clip = DenseCLIP(
            model_name=s.CLIP.MODEL_NAME,
            pretrained=s.CLIP.PRETRAINED,
            resolution=tuple(s.CLIP.RESOLUTION),
            guidance_layers=tuple(s.CLIP.GUIDANCE_LAYERS),
            finetune=s.CLIP.FINETUNE,
            prompt_templates=s.CLIP.PROMPT_TEMPLATES,
            pixel_mean=s.CLIP.PIXEL_MEAN,
            pixel_std=s.CLIP.PIXEL_STD,
            text_batch_size=s.CLIP.TEXT_BATCH_SIZE,
        )
        a = s.AGGREGATOR
        patch = clip.model.visual.patch_size
        patch = patch[0] if isinstance(patch, (tuple, list)) else patch
        feature_resolution = (s.CLIP.RESOLUTION[0] // patch, s.CLIP.RESOLUTION[1] // patch)
        aggregator = Aggregator(
            text_guidance_dim=clip.embed_dim,
            text_guidance_proj_dim=a.TEXT_GUIDANCE_PROJ_DIM,
            appearance_guidance_dim=clip.embed_dim,
            appearance_guidance_proj_dim=a.APPEARANCE_GUIDANCE_PROJ_DIM,
            decoder_dims=tuple(a.DECODER_DIMS),
            decoder_guidance_dims=tuple(a.DECODER_GUIDANCE_DIMS),
            decoder_guidance_proj_dims=tuple(a.DECODER_GUIDANCE_PROJ_DIMS),
            num_layers=a.NUM_LAYERS,
            nheads=a.NUM_HEADS,
            hidden_dim=a.HIDDEN_DIM,
            pooling_size=tuple(a.POOLING_SIZES),
            feature_resolution=feature_resolution,
            window_size=a.WINDOW_SIZE,
            attention_type=a.ATTENTION_TYPE,
            prompt_channel=1,
            pad_len=a.PAD_LEN,
        )
        tspp = TSPPHead(hidden_dim=s.TSPP.HIDDEN_DIM, grid_size=s.TSPP.GRID_SIZE) if s.TSPP.ENABLED else None
        sam = None
        if s.SAM.ENABLED:
            sam = build_mask_generator(
                variant=s.SAM.VARIANT,
                model_type=s.SAM.MODEL_TYPE,
                checkpoint=s.SAM.CHECKPOINT,
                image_size=s.SAM.IMAGE_SIZE,
                points_per_batch=s.SAM.POINTS_PER_BATCH,
                pred_iou_thresh=s.SAM.PRED_IOU_THRESH,
                stability_score_thresh=s.SAM.STABILITY_SCORE_THRESH,
                stability_score_offset=s.SAM.STABILITY_SCORE_OFFSET,
                box_nms_thresh=s.SAM.BOX_NMS_THRESH,
            )
        dmi_low = LowFrequencyInjection(clip.embed_dim, s.DMI.NUM_HEADS) if s.DMI.LOW_ENABLED else None
        dmi_high = None
        if s.DMI.HIGH_ENABLED:
            dmi_high = nn.ModuleList(
                HighFrequencyInjection(d, s.DMI.HIGH_HIDDEN_DIM) for d in a.DECODER_GUIDANCE_DIMS
            )
        train_names = _vocabulary(cfg, cfg.DATASETS.TRAIN)
        test_names = _vocabulary(cfg, cfg.DATASETS.TEST) if len(cfg.DATASETS.TEST) else train_names
        return {
            "clip": clip,
            "aggregator": aggregator,
            "upsample_dims": tuple(a.DECODER_GUIDANCE_DIMS),
            "train_class_names": train_names,
            "test_class_names": test_names,
            "tspp": tspp,
            "sam": sam,
            "dmi_low": dmi_low,
            "dmi_high": dmi_high,
            "train_stage": s.TRAIN_STAGE,
            "sampling": s.TSPP.SAMPLING,
            "grid_size": s.TSPP.GRID_SIZE,
            "g_p": s.TSPP.G_P,
            "m_p": s.TSPP.M_P,
            "num_random_points": s.TSPP.RANDOM_POINTS,
            "lambda_mse": s.TSPP.LAMBDA_MSE,
            "lambda_tspp": s.TSPP.LOSS_WEIGHT,
            "smagg": s.SMAGG.ENABLED,
            "alpha_sma": s.SMAGG.ALPHA_SMA,
            "sliding_window": s.INFERENCE.SLIDING_WINDOW,
            "window_size": s.INFERENCE.WINDOW_SIZE,
            "window_overlap": s.INFERENCE.WINDOW_OVERLAP,
            "out_resolution": s.INFERENCE.OUT_RESOLUTION,
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "inference_seed": cfg.SEED if cfg.SEED >= 0 else 0,
            "inference_amp": s.INFERENCE.AMP,
        }

    # ------------------------------------------------------------------ public helpers
    @property
    def device(self) -> torch.device:
        return self.upsample1.weight.device

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Set the classes predicted at test time (one cached text embedding per vocabulary)."""
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("empty vocabulary: give at least one class name (dataset stuff_classes or VOCABULARY_JSON)")
        self.test_class_names = names

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: List[Dict]):
        for x in batched_inputs:
            check_image(x["image"])
        if self.training:
            images = torch.stack([x["image"].to(self.device) for x in batched_inputs]).float()
            targets = torch.stack([x["sem_seg"].to(self.device) for x in batched_inputs]).long()
            return self.losses(images, targets)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.inference_mode(), torch.autocast(self.device.type, amp_dtype, enabled=self.inference_amp):
            return [self.inference_one(x) for x in batched_inputs]

    def losses(self, images: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """Training losses for images [B,3,H,W] (0-255) and labels [B,H,W] (Sec. 3.5)."""
        out = self.predict(images, self.train_class_names, stage1=self.train_stage == 1)
        losses = {}
        if self.tspp is not None:
            prob_targets = tspp_prob_targets(targets, self.grid_size, self.g_p, self.m_p, self.ignore_value)
            tspp_loss = tspp_losses(
                out["tspp_prob"], out["tspp_logits"], targets, prob_targets, self.lambda_mse, self.ignore_value
            )
            weight = 1.0 if self.train_stage == 1 else self.lambda_tspp
            losses.update({k: v * weight for k, v in tspp_loss.items()})
        if self.train_stage == 2:
            losses["loss_sem_seg"] = per_class_bce(out["logits"], targets, self.ignore_value)
            if out["masks"] is not None:
                storage_put("sam_mi/num_points", out["masks"].num_points)
                storage_put("sam_mi/num_masks", out["masks"].num_masks)
        return losses

    def inference_one(self, x: Dict) -> Dict:
        image = x["image"].to(self.device).float()
        height, width = x.get("height", image.shape[-2]), x.get("width", image.shape[-1])
        names = self.test_class_names
        stats: Dict[str, List[int]] = {"num_points": [], "num_sam_masks": [], "num_masks": []}

        def predict(views: Tensor) -> Tensor:
            out = self.predict(views, names)
            if out["masks"] is not None:
                for k in stats:
                    stats[k].extend(getattr(out["masks"], k))
            return out["logits"]

        if self.sliding_window:
            scores = sliding_window_inference(
                predict, image, self.window_size, self.window_overlap, self.out_resolution, (height, width)
            )
        else:
            scores = whole_image_scores(predict(image[None]), (height, width))
        summary = {k: sum(v) for k, v in stats.items()}
        summary["injected"] = summary["num_masks"] > 0 and (self.dmi_low is not None or self.dmi_high is not None)
        return {"sem_seg": scores, "sam_mi": summary}

    def predict(self, images: Tensor, class_names: Sequence[str], stage1: bool = False) -> Dict:
        """One forward pass over images [B,3,H,W] (0-255 RGB).

        Returns "logits" [B,T,4h,4w] (absent in stage 1), "tspp_prob" [B,G,G] and "tspp_logits" [B,T,h,w]
        (when TSPP is on) and "masks" (``InjectionMasks`` or None).
        """
        # Stage 1 freezes CLIP, so its features need no graph.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not stage1):
            dense, guidance = self.clip.encode_image_dense(images)
            text = self.clip.encode_text(class_names)  # [T, P, D]
        out: Dict = {"masks": None}
        cost = self.cost_maps(dense, text) if self.tspp is not None or self.sam is not None else None
        if self.tspp is not None:
            out["tspp_prob"], out["tspp_logits"] = self.tspp(cost)
        if stage1:
            return out

        masks = None
        if self.sam is not None:
            h, w = dense.shape[-2:]
            masks = generate_injection_masks(
                self.sam,
                images,
                out.get("tspp_prob"),
                out.get("tspp_logits", cost),
                out_size=(4 * h, 4 * w),
                sampling=self.sampling,
                grid_size=self.grid_size,
                num_random=self.num_random_points,
                smagg=self.smagg,
                alpha_sma=self.alpha_sma,
                generator=None if self.training else self._inference_generator(images.device),
            )
            out["masks"] = masks
        out["logits"] = self.aggregate(dense, guidance, text, None if masks is None else masks.masks)
        return out

    def cost_maps(self, dense: Tensor, text: Tensor) -> Tensor:
        """Cosine cost maps S [B, T, h, w] (Sec. 3.1) from dense [B,D,h,w] and text [T,P,D] (templates averaged).

        The image side is detached: TSPP must not move CLIP's visual encoder (Sec. 3.2); the text side keeps
        its gradient."""
        text_b = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
        return cost_volume(dense.detach(), text_b).mean(dim=2)

    def aggregate(self, dense: Tensor, guidance: List[Tensor], text: Tensor, masks: Optional[Tensor]) -> Tensor:
        """DMI (when on and ``masks`` Bool[B,N,4h,4w] are given) then CAT-Seg aggregation -> logits [B,T,4h,4w]."""
        res4, res5 = self.upsample1(guidance[0]), self.upsample2(guidance[1])
        appearance = dense
        if masks is not None:
            if self.dmi_low is not None:  # Eq. 8-10: F_mcr replaces F_l^v as appearance guidance
                appearance = self.dmi_low(dense, resize_masks(masks, tuple(dense.shape[-2:])))
            if self.dmi_high is not None:  # Eq. 11-12 on both decoder guidance maps
                res4 = self.dmi_high[0](res4, resize_masks(masks, tuple(res4.shape[-2:])))
                res5 = self.dmi_high[1](res5, resize_masks(masks, tuple(res5.shape[-2:])))
        text_b = text.unsqueeze(0).expand(dense.shape[0], -1, -1, -1)
        return self.aggregator(dense, text_b, appearance, [res4, res5])

    def _inference_generator(self, device: torch.device) -> torch.Generator:
        # TSPP's sampling is random (Eq. 2); a fixed seed per image makes evaluation repeatable.
        return torch.Generator(device=device).manual_seed(self.inference_seed)


def _drop_sam_keys(module: nn.Module, state_dict: Dict, prefix: str, local_metadata: Dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "sam.")]:
        del state_dict[key]


def _ignore_missing_sam_keys(module: nn.Module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [k for k in missing if not k.startswith("sam.")]


def check_image(image: Tensor) -> None:
    """Reject what is not a [3, H, W] RGB image before it reaches CLIP/SAM's convolutions."""
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(
            f"SAMMI expects each input 'image' as a [3, H, W] RGB tensor (0-255), got {shape}; read images "
            "with detectron2's read_image(path, format='RGB') (INPUT.FORMAT RGB), which also converts "
            "grayscale/RGBA files"
        )


def per_class_bce(logits: Tensor, targets: Tensor, ignore_value: int) -> Tensor:
    """CAT-Seg's loss: logits [B,T,h,w] upsampled to the labels [B,H,W], one-hot targets, mean BCE.

    As in CAT-Seg, ignored pixels are not excluded: their target row is all zeros (negative for every class).
    """
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    num_classes = logits.shape[1]
    valid = targets != ignore_value
    onehot = F.one_hot(torch.where(valid, targets, 0), num_classes).permute(0, 3, 1, 2).float()
    onehot = onehot * valid[:, None]
    return F.binary_cross_entropy_with_logits(logits, onehot)


def storage_put(name: str, values: Optional[List[int]]) -> None:
    """Log a per-batch statistic to detectron2's EventStorage when one is active (training)."""
    if not values:
        return
    from detectron2.utils.events import get_event_storage

    try:
        get_event_storage().put_scalar(name, sum(values) / len(values))
    except AssertionError:  # no storage outside a trainer
        pass


def _vocabulary(cfg, dataset_names: Sequence[str]) -> List[str]:
    """Class names from MODEL.SAM_MI.VOCABULARY_JSON, else from the first dataset's metadata."""
    path = cfg.MODEL.SAM_MI.VOCABULARY_JSON
    if path:
        with open(path) as f:
            return list(json.load(f))
    if not dataset_names:
        raise ValueError("no dataset to take the vocabulary from: set DATASETS.TRAIN/TEST or VOCABULARY_JSON")
    return dataset_vocabulary(dataset_names[0])
