"""Tests of sam_mi.modeling.clip: split-QKV attention, fine-tuning policy, dense image path, text path,
weight loading.  Tiny random CLIP ("sam-mi-tiny") except the full-size parameter-count test."""
import copy
import os

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam_mi.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from sam_mi.modeling.clip import (
    PROMPT_TEMPLATES,
    CLIPWeightsNotFoundError,
    DenseCLIP,
    SplitQKVAttention,
    apply_finetune_policy,
    build_clip_model,
    resolve_pretrained,
    split_attention_,
)

TINY = "sam-mi-tiny"  # 4 visual blocks (W=64, 4 heads), 2 text blocks, D=32, native 224 (14x14 grid)


def make_clip(**kw) -> DenseCLIP:
    args = dict(
        model_name=TINY, pretrained="", resolution=(96, 96), guidance_layers=[1, 2], finetune="attention",
        prompt_templates="single", pixel_mean=CLIP_PIXEL_MEAN, pixel_std=CLIP_PIXEL_STD,
    )
    args.update(kw)
    return DenseCLIP(**args)


# ---------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask_kind", [None, "float", "bool"])
def test_split_attention_equals_mha(batch_first, mask_kind):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    nn.init.normal_(mha.in_proj_bias)
    split = SplitQKVAttention.from_mha(mha)
    x = torch.randn(2, 7, 32) if batch_first else torch.randn(7, 2, 32)
    mask = None
    if mask_kind == "float":
        mask = torch.full((7, 7), float("-inf")).triu_(1)
    elif mask_kind == "bool":
        mask = torch.ones(7, 7, dtype=torch.bool).triu_(1)
    ref = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    out = split(x, x, x, need_weights=False, attn_mask=mask)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert {n for n, _ in split.named_parameters()} == {
        "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}


def test_split_attention_loads_fused_state_dict():
    mha = nn.MultiheadAttention(16, 2)
    split = SplitQKVAttention(16, 2, batch_first=False)
    split.load_state_dict(mha.state_dict(), strict=True)  # in_proj_weight is split with chunk(3)
    q, k, v = mha.in_proj_weight.chunk(3)
    assert torch.equal(split.q_proj_weight, q) and torch.equal(split.k_proj_weight, k)
    assert torch.equal(split.v_proj_weight, v)


def test_split_open_clip_model_is_numerically_unchanged():
    torch.manual_seed(0)
    ref = open_clip.create_model(TINY, force_quick_gelu=True).eval()
    split = copy.deepcopy(ref)
    assert split_attention_(split) == 6
    assert not any(isinstance(m, nn.MultiheadAttention) for m in split.modules())
    img = torch.randn(2, 3, 224, 224)
    tokens = open_clip.get_tokenizer(TINY)(["a photo of a cat", "a dog"])
    with torch.no_grad():
        torch.testing.assert_close(split.encode_image(img), ref.encode_image(img), atol=1e-5, rtol=1e-5)
        # text blocks receive open_clip's causal attn_mask
        torch.testing.assert_close(split.encode_text(tokens), ref.encode_text(tokens), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- fine-tuning
def test_finetune_policies_tiny():
    clip = make_clip()
    trainable = sorted(n for n, p in clip.model.named_parameters() if p.requires_grad)
    expected = sorted(
        [f"visual.transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(4) for w in "qv"]
        + [f"transformer.resblocks.{i}.attn.{w}_proj_weight" for i in range(2) for w in "qv"]
    )
    assert trainable == expected
    assert apply_finetune_policy(clip.model, "full") == sum(p.numel() for p in clip.model.parameters())
    assert apply_finetune_policy(clip.model, "frozen") == 0
    with pytest.raises(ValueError, match="fine-tuning policy"):
        apply_finetune_policy(clip.model, "prompt")


def test_adamw_weight_decay_does_not_move_k():
    torch.manual_seed(0)
    clip = make_clip().train()
    attn = clip.model.visual.transformer.resblocks[0].attn
    text_attn = clip.model.transformer.resblocks[0].attn
    before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    opt = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.5)
    dense, guidance = clip.encode_image_dense(torch.rand(1, 3, 64, 80) * 255)
    text = clip.encode_text(["cat", "dog"])
    loss = torch.einsum("bdhw,tpd->bthw", F.normalize(dense, dim=1), text).sum() + sum(g.mean() for g in guidance)
    loss.backward()
    opt.step()
    assert not torch.equal(attn.q_proj_weight, before["model.visual.transformer.resblocks.0.attn.q_proj_weight"])
    assert not torch.equal(text_attn.v_proj_weight, before["model.transformer.resblocks.0.attn.v_proj_weight"])
    for name, p in clip.named_parameters():
        if "q_proj" not in name and "v_proj" not in name:
            assert torch.equal(p, before[name]), name  # K, biases, out_proj, MLP, LN: untouched


def test_full_size_parameter_counts():
    # the released CAT-Seg models' CLIP: 149,620,737 (B/16) / 427,944,193 (L/14@336); trainable Q/V
    # 48 tensors 20,447,232 / 72 tensors 64,487,424; 350 / 518 state-dict keys.
    for name, total, trainable, tensors, keys in [
        ("ViT-B-16", 149_620_737, 20_447_232, 48, 350),
        ("ViT-L-14-336", 427_944_193, 64_487_424, 72, 518),
    ]:
        model = build_clip_model(name, "")
        assert apply_finetune_policy(model, "attention") == trainable
        assert sum(p.numel() for p in model.parameters()) == total
        assert sum(p.requires_grad for p in model.parameters()) == tensors
        assert len(model.state_dict()) == keys
        del model


# ---------------------------------------------------------------------------------------------- image side
def _reference_dense(clip: DenseCLIP, images: torch.Tensor, res: int):
    """Straight from cvlab-kaist/CAT-Seg cat_seg/third_party/model_vpt.py (LND layout, fused in_proj, own attention)."""
    sd = {k: v.detach() for k, v in clip.model.visual.state_dict().items()}
    heads, width, patch = 4, 64, 16
    ln = lambda x, p: F.layer_norm(x, (width,), sd[p + ".weight"], sd[p + ".bias"])  # noqa: E731

    def mlp(x, p):
        h = F.linear(x, sd[p + ".mlp.c_fc.weight"], sd[p + ".mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        return F.linear(h, sd[p + ".mlp.c_proj.weight"], sd[p + ".mlp.c_proj.bias"])

    def in_proj(x, p):
        w = torch.cat([sd[f"{p}.attn.{n}_proj_weight"] for n in "qkv"])
        return F.linear(x, w, sd[p + ".attn.in_proj_bias"])

    def out_proj(x, p):
        return F.linear(x, sd[p + ".attn.out_proj.weight"], sd[p + ".attn.out_proj.bias"])

    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1)
    x = F.interpolate((images - mean) / std, size=(res, res), mode="bilinear", align_corners=False)
    x = F.conv2d(x, sd["conv1.weight"], stride=patch).flatten(2).permute(0, 2, 1)
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, width), x], dim=1)
    pos, side, tgt = sd["positional_embedding"], 224 // patch, res // patch
    grid = pos[1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False).squeeze(0).reshape(width, -1).T
    x = ln(x + torch.cat([pos[:1], grid]), "ln_pre").permute(1, 0, 2)  # LND
    L, N, _ = x.shape
    hooks = []
    for i in range(3):
        p = f"transformer.resblocks.{i}"
        q, k, v = in_proj(ln(x, p + ".ln_1"), p).chunk(3, dim=-1)
        q, k, v = (t.reshape(L, N * heads, width // heads).transpose(0, 1) for t in (q, k, v))
        a = torch.softmax(q @ k.transpose(1, 2) / (width // heads) ** 0.5, dim=-1)
        x = x + out_proj((a @ v).transpose(0, 1).reshape(L, N, width), p)
        x = x + mlp(ln(x, p + ".ln_2"), p)
        hooks.append(x)
    p = "transformer.resblocks.3"  # forward_dense: in_proj, out_proj on q/k/v, keep v, + CLS, + mlp
    y = in_proj(ln(x, p + ".ln_1"), p).reshape(L, N, 3, width).permute(2, 1, 0, 3).reshape(3 * N, L, width)
    v = out_proj(y, p).tensor_split(3, dim=0)[2].transpose(1, 0) + x[:1]
    v = v + mlp(ln(v, p + ".ln_2"), p)
    out = ln(v.permute(1, 0, 2), "ln_post") @ sd["proj"]  # [N, L, D]
    dense = out[:, 1:].reshape(N, tgt, tgt, -1).permute(0, 3, 1, 2)
    guid = [hooks[i].permute(1, 0, 2)[:, 1:].reshape(N, tgt, tgt, width).permute(0, 3, 1, 2) for i in (1, 2)]
    return dense, guid


def test_encode_image_dense_matches_catseg_reference():
    torch.manual_seed(0)
    clip = make_clip().eval()
    images = torch.rand(2, 3, 70, 90) * 255
    with torch.no_grad():
        dense, guidance = clip.encode_image_dense(images)
        ref_dense, ref_guidance = _reference_dense(clip, images, 96)
    assert dense.shape == (2, clip.embed_dim, 6, 6) and clip.embed_dim == 32 and clip.width == 64
    assert len(guidance) == 2 and all(g.shape == (2, 64, 6, 6) for g in guidance)
    torch.testing.assert_close(dense, ref_dense, atol=1e-4, rtol=1e-4)
    for g, r in zip(guidance, ref_guidance):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
    # the stored embedding keeps its checkpoint shape (resized on the fly)
    assert clip.model.visual.positional_embedding.shape == (14 * 14 + 1, 64)


def test_encode_image_dense_native_and_non_square():
    clip = make_clip(resolution=(224, 224)).eval()
    dense, guidance = clip.encode_image_dense(torch.rand(1, 3, 50, 50) * 255)
    assert dense.shape == (1, 32, 14, 14) and guidance[0].shape == (1, 64, 14, 14)
    wide = make_clip(resolution=(96, 128))
    dense, guidance = wide.encode_image_dense(torch.rand(1, 3, 96, 128) * 255)
    assert dense.shape == (1, 32, 6, 8) and wide.feature_size == (6, 8)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="guidance_layers"):
        make_clip(guidance_layers=[3])  # the last block (3 of 4) runs the dense value path
    with pytest.raises(ValueError, match="multiples of the patch size"):
        make_clip(resolution=(100, 96))
    with pytest.raises(ValueError, match="prompt templates"):
        make_clip(prompt_templates="many")
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        make_clip().encode_image_dense(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="unknown CLIP model"):
        build_clip_model("ViT-Z-99")


def test_pixel_statistics_are_non_persistent():
    clip = make_clip()
    assert not any("pixel" in k for k in clip.state_dict())
    assert all(k.startswith("model.") for k in clip.state_dict())


# ---------------------------------------------------------------------------------------------- text side
def test_prompt_templates_come_from_open_clip():
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    assert PROMPT_TEMPLATES["single"] == ("A photo of a {} in the scene",)
    assert len(PROMPT_TEMPLATES["imagenet"]) == 80 and len(PROMPT_TEMPLATES["imagenet_select"]) == 8
    assert [t.format("cat") for t in PROMPT_TEMPLATES["imagenet"]] == [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]
    assert PROMPT_TEMPLATES["imagenet_select"][0] == "itap of a {}."
    assert PROMPT_TEMPLATES["imagenet_select"][-1] == "A photo of a {} in the scene"


def test_encode_text_matches_direct_encoding_and_first_synonym():
    torch.manual_seed(0)
    clip = make_clip(prompt_templates="imagenet_select", text_batch_size=5).eval()
    names = ["person, individual, someone", "cat", "traffic light", "bed "]
    out = clip.encode_text(names)
    assert out.shape == (4, 8, 32)
    first = ["person", "cat", "traffic light", "bed "]
    prompts = [t.format(n) for n in first for t in PROMPT_TEMPLATES["imagenet_select"]]
    with torch.no_grad():
        ref = F.normalize(clip.model.encode_text(clip.tokenizer(prompts)), dim=-1).reshape(4, 8, 32)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4, 8))
    torch.testing.assert_close(clip.encode_text(["person"])[0], out[0])


def test_encode_text_rejects_empty_vocabulary():
    clip = make_clip()
    with pytest.raises(ValueError, match="empty vocabulary"):
        clip.encode_text([])
    with pytest.raises(TypeError):
        clip.encode_text("cat")


def test_text_cache_per_vocabulary_and_never_stale():
    torch.manual_seed(0)
    clip = make_clip().eval()
    a, b = clip.encode_text(["cat", "dog"]), clip.encode_text(["sky", "road", "tree"])
    assert a.shape == (2, 1, 32) and b.shape == (3, 1, 32)
    assert len(clip._text_cache) == 2
    assert clip.encode_text(["cat", "dog"]) is a and clip.encode_text(["sky", "road", "tree"]) is b

    clip.train()  # training: fresh every call, with gradients; cache cleared
    assert len(clip._text_cache) == 0
    t = clip.encode_text(["cat", "dog"])
    assert t.requires_grad
    opt = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=1e-2)
    (t[0, 0] @ t[1, 0]).backward()
    opt.step()

    clip.eval()
    a2 = clip.encode_text(["cat", "dog"])
    assert a2 is not a and not torch.allclose(a2, a)
    with torch.no_grad():
        tokens = clip.tokenizer(["A photo of a cat in the scene", "A photo of a dog in the scene"])
        ref = F.normalize(clip.model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(a2[:, 0], ref, atol=1e-5, rtol=1e-5)

    # in-place weight change in eval mode (no train() call) is detected through tensor versions
    with torch.no_grad():
        clip.model.text_projection.mul_(2.0).add_(0.1)
    assert clip.encode_text(["cat", "dog"]) is not a2
    # frozen text encoder in training mode (stage 1 / finetune="frozen"): cached too, identical values
    frozen = make_clip(finetune="frozen").train()
    f1 = frozen.encode_text(["cat"])
    assert not f1.requires_grad and frozen.encode_text(["cat"]) is f1
    # loading a state dict clears the cache
    clip.load_state_dict(make_clip().state_dict())
    assert len(clip._text_cache) == 0


# ---------------------------------------------------------------------------------------------- loading
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_load_openai_style_state_dict_jit_and_catseg_prefixed(tmp_path):
    torch.manual_seed(1)
    src = open_clip.create_model(TINY, force_quick_gelu=True).eval()  # fused in_proj_weight, like OpenAI's
    torch.save(src.state_dict(), tmp_path / "tiny.pt")
    jit_src = copy.deepcopy(src)
    jit_src.register_buffer("input_resolution", torch.tensor(224))  # a non-weight entry, as in OpenAI's .pt
    torch.jit.save(torch.jit.script(jit_src), str(tmp_path / "tiny_jit.pt"))
    prefixed = {"sem_seg_head.predictor.clip_model." + k: v for k, v in make_clip().state_dict().items()}
    prefixed = {k.replace("clip_model.model.", "clip_model."): v for k, v in prefixed.items()}
    prefixed["sem_seg_head.predictor.transformer.conv1.weight"] = torch.zeros(1)
    torch.save({"model": prefixed}, tmp_path / "catseg.pth")

    img = torch.rand(1, 3, 224, 224)
    for name in ("tiny.pt", "tiny_jit.pt"):
        clip = make_clip(pretrained=str(tmp_path / name)).eval()
        q, k, v = src.visual.transformer.resblocks[2].attn.in_proj_weight.chunk(3)
        assert torch.equal(clip.model.visual.transformer.resblocks[2].attn.k_proj_weight, k)
        with torch.no_grad():
            torch.testing.assert_close(clip.model.encode_image(img), src.encode_image(img), atol=1e-5, rtol=1e-5)
    clip = make_clip(pretrained=str(tmp_path / "catseg.pth"))
    assert torch.equal(clip.model.visual.proj, prefixed["sem_seg_head.predictor.clip_model.visual.proj"])


def test_load_mismatched_checkpoint_raises(tmp_path):
    sd = make_clip().model.state_dict()
    del sd["visual.ln_post.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(RuntimeError, match="missing keys"):
        make_clip(pretrained=str(tmp_path / "broken.pt"))


def test_missing_weights_error_says_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CLIPWeightsNotFoundError) as err:
        resolve_pretrained("ViT-B-16", "openai", cache_dir=str(tmp_path), allow_download=False)
    msg = str(err.value)
    assert "openaipublic.azureedge.net/clip/models/" in msg and "ViT-B-16.pt" in msg
    assert "MODEL.SAM_MI.CLIP.PRETRAINED /path/to/ViT-B-16.pt" in msg
    assert os.path.join(str(tmp_path), "ViT-B-16.pt") in msg
    with pytest.raises(CLIPWeightsNotFoundError, match="does not exist"):
        resolve_pretrained("ViT-B-16", str(tmp_path / "nope" / "ViT-B-16.pt"))
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        resolve_pretrained(TINY, "openai")
    # a file placed where open_clip / CAT-Seg cache it is found without any download
    url_name = "ViT-B-16.pt"
    (tmp_path / url_name).write_bytes(b"")
    found = resolve_pretrained("ViT-B/16", "openai", cache_dir=str(tmp_path), allow_download=False)
    assert found == str(tmp_path / url_name)
