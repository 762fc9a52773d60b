"""SAM's mask decoder for many single-point prompts on one image, with the work shared across prompts.

segment-anything's `MaskDecoder.predict_masks` copies the image embedding once per prompt and runs the two-way
transformer (`TwoWayTransformer`, depth 2) on every copy. With T = 7 tokens per prompt (IoU token, 4 mask tokens,
the point and the padding point), N = h·w = 4096 image tokens, width C = 256 and attention width D = 128 split
over H = 8 heads of d = 16, its cost per prompt is dominated by the projections of the N image tokens
(N·C·D multiply-adds each, 4 per layer and 2 in the final attention). `FastPointDecoder` computes the same
function (same modules, same weights) with the same layers and a different order of the linear maps:

1. Layer 0 sees the same image tokens for every prompt (embedding + the no-mask dense embedding; SAM-MI never
   passes mask prompts), so its image-side projections (keys and values of token→image, queries of
   image→token) are computed once per image, in `prepare`, not once per prompt and chunk.
2. Token→image attention on per-prompt image tokens X (layer 1 and the final attention): with
   q_h the projected tokens and W_k,h / W_v,h the head's rows of k_proj / v_proj,
       q_h (X W_k,hᵀ + b_k,h)ᵀ = (q_h W_k,h) Xᵀ + const per row   (the constant cancels in the softmax),
       softmax(·) (X W_v,hᵀ + b_v,h) = (softmax(·) X) W_v,hᵀ + b_v,h   (softmax rows sum to 1),
   so the N×C image tokens meet H·T = 56 vectors instead of two C→D projections (N·C·H·T vs 2·N·C·D).
3. Image→token attention: scores (X W_q,hᵀ + b_q,h) K_hᵀ = X (W_q,hᵀ K_hᵀ) + b_q,h K_hᵀ, and the output
   projection is folded into the values, Σ_h A_h (V_h W_o,hᵀ) + b_o, so no N×D tensor is formed either.

4. Output: the two ConvTranspose2d(k=2, s=2) of `output_upscaling` run as per-pixel GEMMs on the tokens in
   place (`_upscaled_masks`), only the mask logits that are kept (`select`: the best candidate, the single
   output, or all) are formed, and only over the top-left `region` of the grid that holds the image.

5. On the CPU the prompts pass through in sub-batches whose per-prompt image tokens ([n, N, C] fp32) fit in
   `cpu_batch_bytes` (8 MiB by default, about one L3 slice): every step above is a pass over such tensors, and
   64 prompts at once (64 MiB per tensor for SAM at 512, 256 MiB at 1024) stream each pass from DRAM.
   Measured on one core of the development machine (AMD EPYC), SAM's decoder, 64 points, "best" masks
   (`tools/benchmark_sam_decoding.py decoder --points 64 --embedding E --threads 1 --clock process`, rows
   "fast/best 1 pass" and "fast/best"): 13.7 -> 8.6 ms per point at E = 32 (SAM at 512; 8 prompts per pass),
   56.4 -> 38.4 ms at E = 64 (SAM at 1024; 2 per pass). Each prompt's computation is independent of the
   others, so the outputs are the same to float rounding. On CUDA the whole chunk goes at once (big batches pay).

Per prompt this is ~0.42 G multiply-adds in the transformer instead of ~1.34 G; the output upscaling (~0.4 G,
unchanged in amount) is then the largest part. The results equal the original to float rounding
(reassociated sums); tests/test_sam_fast_path.py compares logits and IoU predictions with
`MaskDecoder.forward`, and `check_fast_decoder` runs the same comparison on a tiny random input when the
fast decoder is built, so a segment-anything release that changes the decoder fails loudly.
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FastPointDecoder", "ImageState", "check_fast_decoder", "supports_fast_decoder"]

#: Max abs difference (relative to the logits' magnitude) accepted by the build-time check (fp32).
_CHECK_RTOL = 1e-4
#: Per-pass budget of per-prompt image tokens on the CPU (docstring, item 5).
CPU_BATCH_BYTES = 8 << 20


def supports_fast_decoder(mask_decoder: nn.Module) -> bool:
    """True for segment-anything's own `MaskDecoder` with a `TwoWayTransformer` (exact classes; HQ-SAM's
    subclass and SAM 2's decoder have other forwards)."""
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer

    return type(mask_decoder) is MaskDecoder and type(mask_decoder.transformer) is TwoWayTransformer


def _head_rows(linear: nn.Linear, heads: int) -> Tensor:
    """Weight [D, C] of a C->D projection -> [H, d, C] (head h owns rows h·d:(h+1)·d, as `_separate_heads`)."""
    return linear.weight.reshape(heads, -1, linear.weight.shape[1])


def _head_cols(linear: nn.Linear, heads: int) -> Tensor:
    """Weight [C, D] of the D->C output projection -> [H, d, C], head h's columns transposed (W_o,hᵀ)."""
    return linear.weight.reshape(linear.weight.shape[0], heads, -1).permute(1, 2, 0)


def _to_heads(x: Tensor, heads: int) -> Tensor:
    """Projected tokens [n, T, D] -> head-major [H, n·T, d] (one batched matmul per head, no broadcast copies)."""
    n, T, _ = x.shape
    return x.reshape(n, T, heads, -1).permute(2, 0, 1, 3).reshape(heads, n * T, -1)


def _from_heads(x: Tensor, n: int) -> Tensor:
    """[H, n·T, e] -> [n, T, H·e] (the inverse of `_to_heads`, SAM's `_recombine_heads` order)."""
    H, nT, e = x.shape
    return x.reshape(H, n, nT // n, e).permute(1, 2, 0, 3).reshape(n, nT // n, H * e)


def _heads_to_prompt_rows(x: Tensor, n: int) -> Tensor:
    """[H, n·T, e] -> [n, H·T, e] (rows ordered head-major within each prompt)."""
    H, nT, e = x.shape
    return x.reshape(H, n, nT // n, e).transpose(0, 1).reshape(n, H * (nT // n), e)


def _softmax_small(x: Tensor) -> Tensor:
    """Softmax over a short last dim (SAM's 7 tokens), in place on a fresh tensor: ~3x faster on CPU than
    `torch.softmax`, whose kernel is slow for rows this short."""
    x = x - x.amax(dim=-1, keepdim=True)
    x = x.exp_()
    return x.div_(x.sum(dim=-1, keepdim=True))


@dataclass
class ImageState:
    """Per-image tensors shared by all prompts (from `FastPointDecoder.prepare`).

    x: image tokens (embedding + dense embedding) [1, N, C]; pe: positional encoding [1, N, C];
    k0, v0: layer 0's token→image keys / values [H, N, d]; q0: layer 0's image→token queries [H, N, d];
    size: (h, w) of the embedding grid.
    """

    x: Tensor
    pe: Tensor
    k0: Tensor
    v0: Tensor
    q0: Tensor
    size: Tuple[int, int]


class FastPointDecoder(nn.Module):
    """`MaskDecoder.predict_masks` for many prompts on one image (module docstring). Holds no weights of its
    own: it reads those of the wrapped decoder, so loading a checkpoint into SAM is all it needs."""

    def __init__(self, mask_decoder: nn.Module, cpu_batch_bytes: int = CPU_BATCH_BYTES) -> None:
        super().__init__()
        if cpu_batch_bytes < 0:
            raise ValueError(f"cpu_batch_bytes must be >= 0 (0: no sub-batches), got {cpu_batch_bytes}")
        self.cpu_batch_bytes = int(cpu_batch_bytes)
        if not supports_fast_decoder(mask_decoder):
            raise TypeError(f"the fast decoder supports segment-anything's MaskDecoder, got {type(mask_decoder)}")
        self.decoder = [mask_decoder]  # a list: not registered as a submodule (no duplicate state-dict keys)
        t = mask_decoder.transformer
        self.heads = t.num_heads
        if len(t.layers) < 1 or not t.layers[0].skip_first_layer_pe:
            raise TypeError("the fast decoder expects SAM's two-way transformer (first layer without token PE)")

    @property
    def mask_decoder(self) -> nn.Module:
        return self.decoder[0]

    # ------------------------------------------------------------------ per image
    @torch.no_grad()
    def prepare(self, image_embedding: Tensor, image_pe: Tensor, dense_embedding: Tensor) -> ImageState:
        """image_embedding [1,C,h,w], image_pe [1,C,h,w], dense_embedding [1,C,h,w] (SAM's no-mask embedding,
        the same for every prompt) -> ImageState."""
        t = self.mask_decoder.transformer
        h, w = image_embedding.shape[-2:]
        x = (image_embedding + dense_embedding).flatten(2).transpose(1, 2).contiguous()  # [1, N, C]
        pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        first = t.layers[0]
        xp = x + pe
        k0 = _to_heads(first.cross_attn_token_to_image.k_proj(xp), self.heads)
        v0 = _to_heads(first.cross_attn_token_to_image.v_proj(x), self.heads)
        q0 = _to_heads(first.cross_attn_image_to_token.q_proj(xp), self.heads)
        return ImageState(x, pe, k0, v0, q0, (int(h), int(w)))

    # ------------------------------------------------------------------ attention forms
    def _token_to_image_shared(self, attn: nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Tokens attend to projected image tokens shared by all prompts. q [n,T,C]; k, v [H,N,d] -> [n,T,C]."""
        qh = _to_heads(attn.q_proj(q), self.heads)  # [H,nT,d]
        a = torch.softmax((qh / math.sqrt(qh.shape[-1])) @ k.transpose(1, 2), dim=-1)  # [H,nT,N]
        return attn.out_proj(_from_heads(a @ v, q.shape[0]))

    def _token_to_image(self, attn: nn.Module, q: Tensor, k_in: Tensor, v_in: Tensor) -> Tensor:
        """Tokens attend to per-prompt image tokens, projections folded into the tokens (docstring, item 2).
        q [n,T,C]; k_in (= keys + pe), v_in (= keys) [n,N,C] -> [n,T,C]."""
        n, H = q.shape[0], self.heads
        qh = _to_heads(attn.q_proj(q), H)  # [H,nT,d]
        d = qh.shape[-1]
        # q·b_k is constant per row and cancels in the softmax; the scale is applied to the small factor.
        g = _heads_to_prompt_rows((qh / math.sqrt(d)) @ _head_rows(attn.k_proj, H), n)  # [n,HT,C]
        a = torch.softmax(g @ k_in.transpose(1, 2), dim=-1)  # [n,HT,N]
        y = _to_heads((a @ v_in).reshape(n, H, -1, v_in.shape[-1]).transpose(1, 2).flatten(2), H)  # [H,nT,C]
        out = torch.baddbmm(attn.v_proj.bias.reshape(H, 1, d), y, _head_rows(attn.v_proj, H).transpose(1, 2))
        return attn.out_proj(_from_heads(out, n))

    def _image_to_token(
        self, attn: nn.Module, img: Optional[Tensor], tokens_pe: Tensor, tokens: Tensor, q_img: Optional[Tensor]
    ) -> Tensor:
        """Image tokens attend to the prompt tokens (docstring, item 3).

        img (= keys + pe) [n, N, C], or for layer 0 q_img = its projected queries [H,N,d] shared by all prompts;
        tokens_pe (= queries + query_pe) [n,T,C]; tokens (values) [n,T,C] -> [n,N,C] (output bias included).
        """
        n, T, _ = tokens.shape
        H = self.heads
        kt = _to_heads(attn.k_proj(tokens_pe), H)  # [H,nT,d]
        kt = kt / math.sqrt(kt.shape[-1])  # the scale goes on the small factor, not on the scores
        if q_img is not None:
            scores = q_img @ kt.transpose(1, 2)  # [H,N,nT]
            a = _softmax_small(scores.reshape(H, -1, n, T))  # [H,N,n,T]
            a = a.permute(2, 1, 0, 3).reshape(n, -1, H * T)  # [n,N,HT]
        else:
            m = _head_rows(attn.q_proj, H).transpose(1, 2) @ kt.transpose(1, 2)  # [H,C,nT]: W_q,hᵀ K_hᵀ
            m = m.reshape(H, -1, n, T).permute(2, 1, 0, 3).reshape(n, -1, H * T)  # [n,C,HT]
            c = attn.q_proj.bias.reshape(H, 1, -1) @ kt.transpose(1, 2)  # [H,1,nT]: b_q,h K_hᵀ
            c = c.reshape(H, n, T).transpose(0, 1).reshape(n, 1, H * T)
            a = _softmax_small(torch.baddbmm(c, img, m).reshape(n, -1, H, T)).reshape(n, -1, H * T)
        vt = _to_heads(attn.v_proj(tokens), H)  # [H,nT,d]
        u = _heads_to_prompt_rows(vt @ _head_cols(attn.out_proj, H), n)  # [n,HT,C]: V_h W_o,hᵀ
        return torch.baddbmm(attn.out_proj.bias, a, u)  # [n,N,C]

    def _upscaled_masks(self, tokens: Tensor, hyper_in: Tensor) -> Tensor:
        """`output_upscaling` then the hypernetwork product: image tokens [n,h,w,C] (channels last),
        hyper_in [n,K,C/8] -> mask logits [n,K,4h,4w].

        Each ConvTranspose2d(k=2, s=2) maps one input pixel to a 2x2 block, i.e. it is a per-pixel linear map
        C -> 4·C' followed by a pixel shuffle; LayerNorm2d (over channels) and GELU are per pixel too. So both
        upsampling steps run as GEMMs on the tokens in place (pixel (i, j) holds its 4x4 output block as
        [a, b, a', b', C/8], output row 4i + 2a + a'), and only the K mask logits are shuffled into the image
        layout at the end, instead of the C/4- and C/8-channel feature maps.
        """
        up1, norm, act1, up2, act2 = self.mask_decoder.output_upscaling
        n, h, w, _ = tokens.shape
        c1, c2 = up1.weight.shape[1], up2.weight.shape[1]
        w1 = up1.weight.permute(2, 3, 1, 0).reshape(4 * c1, -1)  # rows ordered (a, b, c1)
        w2 = up2.weight.permute(2, 3, 1, 0).reshape(4 * c2, -1)
        y = F.linear(tokens, w1, up1.bias.repeat(4)).reshape(n, h, w, 4, c1)
        y = act1(F.layer_norm(y, (c1,), norm.weight, norm.bias, norm.eps))
        y = act2(F.linear(y, w2, up2.bias.repeat(4)))  # [n,h,w,(a,b),(a',b',c2)]
        k = hyper_in.shape[1]
        logits = y.reshape(n, -1, c2) @ hyper_in.transpose(1, 2)  # [n, h·w·16, K]
        logits = logits.reshape(n, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)  # [n,K,i,a,a',j,b,b']
        return logits.reshape(n, k, 4 * h, 4 * w)

    # ------------------------------------------------------------------ per prompt
    def prompts_per_pass(self, state: ImageState, n: int) -> int:
        """How many of n prompts go through `forward` together (docstring, item 5): all of them on CUDA or
        with ``cpu_batch_bytes`` 0, else as many as keep [n, N, C] within ``cpu_batch_bytes`` (>= 1)."""
        if state.x.device.type != "cpu" or self.cpu_batch_bytes == 0:
            return max(n, 1)
        per_prompt = state.x.numel() * state.x.element_size()  # one prompt's image tokens
        return max(1, min(n, self.cpu_batch_bytes // per_prompt))

    @torch.no_grad()
    def forward(
        self, state: ImageState, sparse: Tensor, select: str = "all", region: Optional[Tuple[int, int]] = None
    ) -> Tuple[Tensor, Tensor]:
        """Decode prompts [n,S,C] (sparse prompt embeddings) on the image of `state`.

        select: "all" -> (masks [n,1+K,4r,4c], iou [n,1+K]), every output of `predict_masks` (index 0 is the
        single-output token, 1: the multimask candidates); "amg" -> the K candidates, flattened to
        ([n·K,4r,4c], [n·K]); "best" -> per prompt the candidate with the highest predicted IoU, "single" ->
        the single-output token, both ([n,4r,4c], [n]). Only the returned masks are computed.
        region: (r, c) = the top-left embedding rows/columns to upscale (default all): mask logits then cover
        the top-left 4r×4c of SAM's low-res map.
        """
        if select not in ("all", "amg", "best", "single"):
            raise ValueError(f"select must be 'all', 'amg', 'best' or 'single', got {select!r}")
        step = self.prompts_per_pass(state, sparse.shape[0])
        if step >= sparse.shape[0]:
            return self._decode_prompts(state, sparse, select, region)
        parts = [self._decode_prompts(state, sparse[i : i + step], select, region)
                 for i in range(0, sparse.shape[0], step)]
        return torch.cat([m for m, _ in parts]), torch.cat([q for _, q in parts])

    def _decode_prompts(
        self, state: ImageState, sparse: Tensor, select: str, region: Optional[Tuple[int, int]]
    ) -> Tuple[Tensor, Tensor]:
        """`forward` for one pass of prompts (same arguments and outputs)."""
        md = self.mask_decoder
        t = md.transformer
        n = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(n, -1, -1), sparse], dim=1)  # [n,T,C]
        query_pe = tokens
        queries = tokens
        keys = None  # layer 0's image tokens are the shared state.x
        k_in = None
        for layer in t.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + query_pe
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            q = queries + query_pe
            if keys is None:
                attn_out = self._token_to_image_shared(layer.cross_attn_token_to_image, q, state.k0, state.v0)
            else:
                k_in = keys + state.pe
                attn_out = self._token_to_image(layer.cross_attn_token_to_image, q, k_in, keys)
            queries = layer.norm2(queries + attn_out)
            queries = layer.norm3(queries + layer.mlp(queries))
            q = queries + query_pe
            if keys is None:
                attn_out = self._image_to_token(layer.cross_attn_image_to_token, None, q, queries, state.q0)
                keys = layer.norm4(attn_out.add_(state.x))  # fresh tensor first: contiguous, in place
            else:
                attn_out = self._image_to_token(layer.cross_attn_image_to_token, k_in, q, queries, None)
                keys = layer.norm4(attn_out.add_(keys))
        q = queries + query_pe
        final = self._token_to_image(t.final_attn_token_to_image, q, keys + state.pe, keys)
        queries = t.norm_final_attn(queries + final)

        iou = md.iou_prediction_head(queries[:, 0])  # [n,1+K]
        mask_tokens = queries[:, 1 : 1 + md.num_mask_tokens]  # [n,1+K,C]
        mlps = md.output_hypernetworks_mlps
        if select in ("best", "single"):
            idx = iou[:, 1:].argmax(dim=1) + 1 if select == "best" else torch.zeros_like(iou[:, 0], dtype=torch.long)
            rows = torch.arange(n, device=iou.device)
            # each token has its own hypernetwork MLP: run all (tiny), keep the selected output
            hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)[rows, idx, None]
            iou = iou[rows, idx]
        else:
            hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(mlps)], dim=1)  # [n,1+K,C/8]
        h, w = state.size
        r, c = region if region is not None else (h, w)
        tokens_img = keys.reshape(n, h, w, -1)[:, :r, :c]
        if select == "amg":
            hyper_in, iou = hyper_in[:, 1:], iou[:, 1:]
        masks = self._upscaled_masks(tokens_img, hyper_in)
        if select in ("best", "single"):
            return masks[:, 0], iou
        if select == "amg":
            return masks.flatten(0, 1), iou.flatten(0, 1)
        return masks, iou


@torch.no_grad()
def check_fast_decoder(mask_decoder: nn.Module, prompt_encoder: nn.Module) -> float:
    """Compare `FastPointDecoder` with `mask_decoder.predict_masks` on a small random image (fp32, the
    decoder's device); raise ValueError if they disagree, return the max abs logit difference."""
    p = mask_decoder.iou_token.weight
    c = p.shape[1]
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(1, c, 4, 5, generator=gen).to(p.device)
    pe = torch.randn(1, c, 4, 5, generator=gen).to(p.device)
    coords = (torch.rand(3, 1, 2, generator=gen) * 16).to(p.device)
    labels = torch.ones(3, 1, dtype=torch.int, device=p.device)
    sparse, _ = prompt_encoder(points=(coords, labels), boxes=None, masks=None)
    dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, 4, 5)
    ref_masks, ref_iou = mask_decoder.predict_masks(emb, pe, sparse, dense)
    fast = FastPointDecoder(mask_decoder)
    masks, iou = fast(fast.prepare(emb, pe, dense), sparse)
    err = max((masks - ref_masks).abs().max().item(), (iou - ref_iou).abs().max().item())
    scale = max(1.0, ref_masks.abs().max().item())
    if not err <= _CHECK_RTOL * scale:
        raise ValueError(
            f"segment-anything's MaskDecoder no longer matches the fast point decoder (max abs error {err:.3g}); "
            "set MODEL.SAM_MI.SAM.FAST_DECODER False and update sam_mi/modeling/sam/fast_decoder.py"
        )
    return err
