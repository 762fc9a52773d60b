"""DenseCLIP: CLIP dense image features, intermediate guidance features and class text embeddings.

These are SAM-MI's (Sec. 3.1) CLIP inputs to the cost volume: dense image embeddings ``E_v`` [B,D,h,w]
from the image encoder with CAT-Seg's modified last block, text embeddings ``E_t`` [T,P,D], and the
outputs of two intermediate blocks that guide the upsampling decoder (cvlab-kaist/CAT-Seg cat_seg/third_party/model_vpt.py and
cat_seg/modeling/transformer/cat_seg_predictor.py).
"""
from typing import Hashable, List, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .build import apply_finetune_policy, build_clip_model, canonical_model_name
from .text import TextEmbeddingCache, build_prompts, get_templates

__all__ = ["DenseCLIP", "build_dense_clip", "resize_pos_embed"]


def resize_pos_embed(pos_embed: Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int]) -> Tensor:
    """Bicubically resize (align_corners=False) a ViT positional embedding [1 + gh*gw, W] -> [1 + nh*nw, W].

    The CLS position is kept as is.  Used each forward when the token grid differs from the stored one
    (ViT-B/16 stored 14x14, run at 384 -> 24x24), so the stored Parameter keeps its checkpoint shape."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    width = pos_embed.shape[-1]
    grid_pos = grid_pos.reshape(1, old_grid[0], old_grid[1], width).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], width)
    return torch.cat([cls_pos, grid_pos], dim=0)


class DenseCLIP(nn.Module):
    """CLIP wrapper producing dense features for cost aggregation (contract: docs/CONTRACTS.md, "CLIP").

    Args:
        model_name: open_clip model name ("ViT-B-16", "ViT-L-14-336", "sam-mi-tiny").
        pretrained: "openai" (open_clip tag), a checkpoint file, or "" (random init).
        resolution: (H, W) CLIP input size (384x384 for ViT-B/16, 336x336 for ViT-L/14@336).
        guidance_layers: indices of blocks whose outputs are returned as guidance ([3, 7] ViT-B,
            [7, 15] ViT-L); each must be below the last block (that one runs the dense value path).
        finetune: "attention" (Q/V of both encoders), "full" or "frozen".
        prompt_templates: "single", "imagenet_select" or "imagenet".
        pixel_mean, pixel_std: CLIP normalisation in 0-255 RGB.
        text_batch_size: prompts per text-encoder call (bounds memory for 847-class vocabularies).
        quick_gelu: QuickGELU activations (OpenAI / CAT-Seg CLIP); see ``build_clip_model``.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str,
        resolution: Sequence[int],
        guidance_layers: Sequence[int],
        finetune: str,
        prompt_templates: str,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        text_batch_size: int = 256,
        quick_gelu: bool = True,
    ) -> None:
        super().__init__()
        self.model_name = canonical_model_name(model_name)
        self.model = build_clip_model(self.model_name, pretrained, quick_gelu=quick_gelu)
        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        visual = self.model.visual
        num_blocks = len(visual.transformer.resblocks)
        if len(resolution) != 2 or any(int(r) % visual.patch_size[0] for r in resolution):
            raise ValueError(
                f"resolution {tuple(resolution)} must be (H, W) multiples of the patch size {visual.patch_size}"
            )
        bad = [i for i in guidance_layers if not 0 <= int(i) < num_blocks - 1]
        if bad:
            raise ValueError(
                f"guidance_layers {list(guidance_layers)}: {bad} out of range; must be in [0, {num_blocks - 2}] "
                f"({num_blocks} blocks, the last one runs the dense value path)"
            )
        if len(pixel_mean) != 3 or len(pixel_std) != 3:
            raise ValueError("pixel_mean and pixel_std need 3 (RGB) values each")
        if text_batch_size < 1:
            raise ValueError("text_batch_size must be >= 1")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.guidance_layers = tuple(int(i) for i in guidance_layers)
        self.finetune = finetune
        self.prompt_templates = prompt_templates
        self.templates = get_templates(prompt_templates)
        self.text_batch_size = int(text_batch_size)
        # Non-persistent: CAT-Seg checkpoints carry no pixel statistics, and config values must win.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1), False)
        apply_finetune_policy(self.model, finetune)
        self._text_params = [p for n, p in self.model.named_parameters() if not n.startswith("visual.")]
        self._text_cache = TextEmbeddingCache()
        self._token_cache = TextEmbeddingCache()

    # ------------------------------------------------------------------ properties
    @property
    def embed_dim(self) -> int:
        """D: joint embedding width (512 ViT-B/16, 768 ViT-L/14)."""
        return int(self.model.visual.proj.shape[1])

    @property
    def width(self) -> int:
        """W: visual transformer width (768 ViT-B, 1024 ViT-L) = channels of the guidance maps."""
        return int(self.model.visual.conv1.out_channels)

    @property
    def feature_size(self) -> Tuple[int, int]:
        """(h, w) token grid at ``resolution`` (24x24 for ViT-B/16@384 and ViT-L/14@336)."""
        ph, pw = self.model.visual.patch_size
        return self.resolution[0] // ph, self.resolution[1] // pw

    # ------------------------------------------------------------------ image side
    def encode_image_dense(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """images [B,3,H,W] float 0-255 RGB -> (dense [B,D,h,w], guidance list of [B,W,h,w]).

        CAT-Seg's dense forward (cvlab-kaist/CAT-Seg cat_seg/third_party/model_vpt.py): normalise, bilinear resize to ``resolution``,
        patchify + CLS + (resized) positional embedding, ln_pre, blocks 0..N-2 (collecting the outputs
        of ``guidance_layers``), the last block's value path, ln_post on all tokens, @ proj; CLS dropped.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B,3,H,W] RGB, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor of 0-255 values, got dtype {images.dtype}")
        visual = self.model.visual
        dtype = visual.conv1.weight.dtype
        x = (images - self.pixel_mean) / self.pixel_std
        x = F.interpolate(x, size=self.resolution, mode="bilinear", align_corners=False).to(dtype)

        x = visual.conv1(x)  # [B, W, h, w]
        batch, width, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, W]
        cls = visual.class_embedding.to(dtype).view(1, 1, width).expand(batch, 1, width)
        x = torch.cat([cls, x], dim=1)  # [B, 1+h*w, W]
        x = x + resize_pos_embed(visual.positional_embedding, visual.grid_size, (gh, gw)).to(dtype)
        x = visual.ln_pre(x)

        transformer = visual.transformer
        if not transformer.batch_first:
            x = x.transpose(0, 1)  # blocks expect [L, B, W]
        blocks = transformer.resblocks
        guidance: List[Tensor] = []
        for i, block in enumerate(blocks[:-1]):
            x = block(x)
            if i in self.guidance_layers:
                guidance.append(x)
        x = self._dense_last_block(blocks[-1], x, batch_first=transformer.batch_first)
        if not transformer.batch_first:
            x = x.transpose(0, 1)
            guidance = [g.transpose(0, 1) for g in guidance]

        x = visual.ln_post(x) @ visual.proj  # [B, 1+h*w, D]
        dense = x[:, 1:].transpose(1, 2).reshape(batch, -1, gh, gw)
        guidance = [g[:, 1:].transpose(1, 2).reshape(batch, width, gh, gw) for g in guidance]
        return dense, guidance

    @staticmethod
    def _dense_last_block(block: nn.Module, x: Tensor, batch_first: bool) -> Tensor:
        """CAT-Seg's ``forward_dense`` of the last block: no attention mixing (value path only) and the
        residual is the block input's CLS token broadcast to all positions, not ``x`` itself."""
        y = block.ls_1(block.attn.value_output(block.ln_1(x)))
        cls = x[:, :1] if batch_first else x[:1]
        y = y + cls
        return y + block.ls_2(block.mlp(block.ln_2(y)))

    # ------------------------------------------------------------------ text side
    def _text_version(self) -> Hashable:
        # In-place updates (optimizer steps, load_state_dict, .copy_) bump a tensor's _version: an eval-mode
        # cache entry made with other weights is never returned, even if no train()/load hook ran.
        # Device/dtype too: Module.to() swaps .data without bumping versions.
        ref = self.model.token_embedding.weight
        return (ref.device, ref.dtype) + tuple((id(p), p._version) for p in self._text_params)

    def _tokens(self, class_names: Tuple[str, ...]) -> Tensor:
        key = (class_names, self.templates)
        tokens = self._token_cache.get(key, None)
        if tokens is None:
            tokens = self.tokenizer(build_prompts(class_names, self.templates))  # [T*P, ctx]
            self._token_cache.put(key, None, tokens)
        return tokens

    def _encode_prompts(self, tokens: Tensor) -> Tensor:
        """tokens [N, ctx] -> L2-normalised text embeddings [N, D], ``text_batch_size`` prompts per call."""
        device = self.model.token_embedding.weight.device
        chunks = [
            self.model.encode_text(tokens[i:i + self.text_batch_size].to(device))
            for i in range(0, tokens.shape[0], self.text_batch_size)
        ]
        return F.normalize(torch.cat(chunks, dim=0), dim=-1)

    def encode_text(self, class_names: Sequence[str]) -> Tensor:
        """class names (T) -> L2-normalised text embeddings [T, P, D], P = number of templates.

        Only the first synonym of "a, b, c" names is used (CAT-Seg v2).  Training mode with a trainable text
        encoder: computed fresh on every call, with gradients.  Otherwise (eval mode, or a frozen text
        encoder): cached per vocabulary (key = class-name tuple + templates; an entry is only returned if the
        text weights' versions, device and dtype are unchanged) and computed without gradients.  The cache
        is also cleared on ``train()`` and on ``load_state_dict``, so it is never stale."""
        if isinstance(class_names, str):
            raise TypeError("encode_text expects a sequence of class names, not a single string")
        names = tuple(class_names)
        tokens = self._tokens(names)  # raises ValueError on an empty vocabulary
        num_templates = len(self.templates)
        if self.training and any(p.requires_grad for p in self._text_params):
            return self._encode_prompts(tokens).reshape(len(names), num_templates, -1)
        key, version = (names, self.templates), self._text_version()
        cached = self._text_cache.get(key, version)
        if cached is None:
            with torch.no_grad():
                cached = self._encode_prompts(tokens).reshape(len(names), num_templates, -1)
            self._text_cache.put(key, version, cached)
        return cached

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def train(self, mode: bool = True) -> "DenseCLIP":
        if mode:
            self._text_cache.clear()
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # called for this module by any parent's load
        self._text_cache.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"model_name={self.model_name!r}, resolution={self.resolution}, guidance_layers={self.guidance_layers}, "
            f"finetune={self.finetune!r}, prompt_templates={self.prompt_templates!r}"
        )


def build_dense_clip(cfg) -> DenseCLIP:
    """DenseCLIP from ``MODEL.SAM_MI.CLIP``."""
    c = cfg.MODEL.SAM_MI.CLIP
    return DenseCLIP(
        model_name=c.MODEL_NAME,
        pretrained=c.PRETRAINED,
        resolution=tuple(c.RESOLUTION),
        guidance_layers=tuple(c.GUIDANCE_LAYERS),
        finetune=c.FINETUNE,
        prompt_templates=c.PROMPT_TEMPLATES,
        pixel_mean=c.PIXEL_MEAN,
        pixel_std=c.PIXEL_STD,
        text_batch_size=c.TEXT_BATCH_SIZE,
    )
