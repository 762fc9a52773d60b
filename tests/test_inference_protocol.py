"""Whole-image and sliding-window inference against a re-statement of CAT-Seg's own test code.

The reference below follows cvlab-kaist/CAT-Seg ``cat_seg/cat_seg_model.py`` (``CATSeg.forward`` at test
time and ``inference_sliding_window``) step by step, with detectron2's real ``ImageList.from_tensors`` and
``sem_seg_postprocess``: normalise, pad with zeros, resize to the CLIP resolution, predict, sigmoid,
post-process; and for the sliding window their Unfold / Fold code path.  Ours and the reference wrap the
same per-view predictor (a fixed random function, or the tiny model with its SAM parts off).
"""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import sem_seg_postprocess as d2_sem_seg_postprocess
from detectron2.structures import ImageList
from torch import nn

from conftest import tiny_cfg

from sam_mi.config import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from sam_mi.modeling.inference import (
    pad_to_divisible,
    sliding_window_boxes,
    sliding_window_inference,
    sliding_window_views,
    whole_image_inference,
)

MEAN = torch.tensor(CLIP_PIXEL_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_PIXEL_STD).view(3, 1, 1)


# ----------------------------------------------------------------------------- CAT-Seg, re-stated
def catseg_whole_image(core, image, clip_res, size_divisibility, height, width):
    """CATSeg.forward at test time (no sliding window), batch of one."""
    clip_images = [(image - MEAN) / STD]
    clip_images = ImageList.from_tensors(clip_images, size_divisibility)
    resized = F.interpolate(clip_images.tensor, size=clip_res, mode="bilinear", align_corners=False)
    outputs = core(resized).sigmoid()
    return d2_sem_seg_postprocess(outputs[0], clip_images.image_sizes[0], height, width)


def catseg_sliding_window(core, image, clip_res, height, width, kernel=384, overlap=0.333, out_res=(640, 640)):
    """CATSeg.inference_sliding_window (einops' rearrange written as transpose + reshape)."""
    out_res = list(out_res)
    stride = int(kernel * (1 - overlap))
    unfold = nn.Unfold(kernel_size=kernel, stride=stride)
    fold = nn.Fold(out_res, kernel_size=kernel, stride=stride)
    img = F.interpolate(image.unsqueeze(0), size=out_res, mode="bilinear", align_corners=False).squeeze()
    img = unfold(img).T.reshape(-1, 3, kernel, kernel)  # "(C H W) L -> L C H W"
    global_image = F.interpolate(image.unsqueeze(0), size=(kernel, kernel), mode="bilinear", align_corners=False)
    img = torch.cat((img, global_image), dim=0)
    clip_images = (img - MEAN) / STD
    clip_images = F.interpolate(clip_images, size=clip_res, mode="bilinear", align_corners=False)
    outputs = core(clip_images)
    outputs = F.interpolate(outputs, size=kernel, mode="bilinear", align_corners=False).sigmoid()
    global_output = F.interpolate(outputs[-1:], size=out_res, mode="bilinear", align_corners=False)
    outputs = outputs[:-1]
    outputs = fold(outputs.flatten(1).T) / fold(unfold(torch.ones([1] + out_res)))
    outputs = (outputs + global_output) / 2.0
    return d2_sem_seg_postprocess(outputs[0], out_res, height, width)


# ----------------------------------------------------------------------------- predictors
class RandomCore:
    """A fixed random per-view predictor on CLIP-ready input [B, 3, r, r] -> logits [B, T, r/4, r/4]
    (CAT-Seg's logits are 4x the ViT-B/16 token grid, i.e. r / 4)."""

    def __init__(self, num_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w1 = torch.randn(16, 3, 4, 4, generator=g) * 0.2
        self.w2 = torch.randn(num_classes, 16, generator=g)

    def __call__(self, x):
        f = torch.tanh(F.conv2d(x, self.w1, stride=4))
        return torch.einsum("bchw,tc->bthw", f, self.w2) * 2.0


def ours(core, clip_res):
    """Our side: predict takes 0-255 views and normalises + resizes inside, as DenseCLIP.encode_image_dense."""

    def predict(views):
        x = (views - MEAN) / STD
        return core(F.interpolate(x, size=clip_res, mode="bilinear", align_corners=False))

    return predict


def assert_same(mine, ref):
    assert mine.shape == ref.shape
    rel = ((mine - ref).abs().max() / ref.abs().max()).item()
    agree = (mine.argmax(0) == ref.argmax(0)).float().mean().item()
    assert rel <= 1e-4, f"relative difference {rel:.2e}"
    assert agree >= 0.999, f"argmax agrees on {agree:.4%} of pixels"


def random_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (3, h, w), generator=g).float()
    return F.avg_pool2d(img[None], 3, stride=1, padding=1, count_include_pad=False)[0]  # some structure


# ----------------------------------------------------------------------------- identities
def test_mean_padding_equals_zero_padding_of_the_normalised_image():
    image = random_image(50, 70)
    padded = pad_to_divisible(image, 32, CLIP_PIXEL_MEAN)
    assert padded.shape == (3, 64, 96)
    ref = ImageList.from_tensors([(image - MEAN) / STD], 32).tensor[0]
    assert torch.equal((padded - MEAN) / STD, ref)
    assert pad_to_divisible(image, 0, 0.0) is image and pad_to_divisible(image[:, :32, :64], 32, 0.0).shape == (3, 32, 64)
    with pytest.raises(ValueError, match="per channel"):
        pad_to_divisible(image, 32, [1.0, 2.0])
    with pytest.raises(ValueError, match="float tensor"):
        pad_to_divisible(image.to(torch.uint8), 32, CLIP_PIXEL_MEAN)  # the mean would be truncated


def test_bilinear_resize_commutes_with_normalisation():
    image = random_image(53, 71)
    a = (F.interpolate(image[None], size=(40, 90), mode="bilinear", align_corners=False)[0] - MEAN) / STD
    b = F.interpolate(((image - MEAN) / STD)[None], size=(40, 90), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- random predictor
@pytest.mark.parametrize("num_classes", [5, 300])
@pytest.mark.parametrize("hw", [(200, 300), (20, 50)])  # (20, 50): smaller than the logits map (crop quirk)
def test_whole_image_matches_catseg(num_classes, hw):
    core, clip_res = RandomCore(num_classes), (96, 96)
    image = random_image(*hw, seed=num_classes)
    out_size = (hw[0] + 37, hw[1] + 61)
    mine = whole_image_inference(ours(core, clip_res), image, 32, CLIP_PIXEL_MEAN, out_size)
    ref = catseg_whole_image(core, image, clip_res, 32, *out_size)
    assert_same(mine, ref)
    # the previous path (unpadded input, upsample then sigmoid) is not CAT-Seg's
    old = F.interpolate(ours(core, clip_res)(image[None]), size=out_size, mode="bilinear").sigmoid()[0]
    assert (old - ref).abs().max() > 1e-3


@pytest.mark.parametrize(
    "num_classes,kernel,out_res,clip_res", [(5, 384, 640, (384, 384)), (300, 96, 160, (64, 64))]
)
def test_sliding_window_matches_catseg(num_classes, kernel, out_res, clip_res):
    core = RandomCore(num_classes)
    image = random_image(170, 230, seed=1)
    out_size = (170, 230)
    mine = sliding_window_inference(ours(core, clip_res), image, kernel, 0.333, out_res, out_size)
    ref = catseg_sliding_window(core, image, clip_res, *out_size, kernel=kernel, out_res=(out_res, out_res))
    assert_same(mine, ref)


def test_global_view_is_the_original_image_resized():
    image = random_image(170, 230, seed=2)
    views, stride = sliding_window_views(image, 384, 0.333, 640)
    assert views.shape == (5, 3, 384, 384) and stride == 256
    direct = F.interpolate(image[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    assert torch.equal(views[-1], direct)
    canvas = F.interpolate(image[None], size=(640, 640), mode="bilinear", align_corners=False)
    twice = F.interpolate(canvas, size=(384, 384), mode="bilinear", align_corners=False)[0]
    assert (twice - direct).abs().max() > 1.0  # resampling the canvas again changes pixels


def test_view_boxes_locate_the_crops():
    image = random_image(90, 150, seed=3)
    views, _ = sliding_window_views(image, 96, 0.333, 160)
    boxes = sliding_window_boxes((90, 150), 96, 0.333, 160)
    assert boxes.shape == (5, 4)
    torch.testing.assert_close(boxes[-1], torch.tensor([0.0, 0.0, 150.0, 90.0]))
    canvas = F.interpolate(image[None], size=(160, 160), mode="bilinear", align_corners=False)[0]
    for view, (x0, y0, x1, y1) in zip(views[:-1], boxes[:-1].tolist()):
        c0, r0 = round(x0 * 160 / 150), round(y0 * 160 / 90)
        assert torch.equal(view, canvas[:, r0 : r0 + 96, c0 : c0 + 96])
        assert x1 - x0 == pytest.approx(96 * 150 / 160) and y1 - y0 == pytest.approx(96 * 90 / 160)


# ----------------------------------------------------------------------------- the tiny model, SAM off
@contextlib.contextmanager
def identity_normalisation(clip):
    """The reference feeds CLIP-ready tensors: make the model's own normalisation the identity."""
    mean, std = clip.pixel_mean.clone(), clip.pixel_std.clone()
    clip.pixel_mean.zero_()
    clip.pixel_std.fill_(1.0)
    try:
        yield
    finally:
        clip.pixel_mean.copy_(mean)
        clip.pixel_std.copy_(std)


@pytest.fixture(scope="module")
def baseline_model(synthetic_root):
    torch.manual_seed(0)
    return build_model(tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml")).eval()


@pytest.mark.parametrize("num_classes", [5, 300])
def test_tiny_model_matches_catseg_both_modes(baseline_model, num_classes):
    model = baseline_model
    names = [f"thing number {i}" for i in range(num_classes)]
    clip_res = model.clip.resolution
    image = random_image(100, 140, seed=4)

    def predict(views):
        return model.predict(views, names)["logits"]

    def core(x):
        with identity_normalisation(model.clip):
            return model.predict(x, names)["logits"]

    with torch.no_grad():
        mine = whole_image_inference(predict, image, 32, model.clip.pixel_mean.view(3), (110, 150))
        ref = catseg_whole_image(core, image, clip_res, 32, 110, 150)
        assert_same(mine, ref)
        mine = sliding_window_inference(predict, image, 96, 0.333, 160, (100, 140))
        ref = catseg_sliding_window(core, image, clip_res, 100, 140, kernel=96, out_res=(160, 160))
        assert_same(mine, ref)


def _baseline_and_core(sliding_window: bool, seed: int):
    """The tiny baseline (SAM parts off), its scores through SAMMI.forward for one image, and the per-view
    predictor CAT-Seg's test code wraps (the model's forward without its own normalisation)."""
    torch.manual_seed(0)
    cfg = tiny_cfg("configs/tiny/sam_mi_tiny_baseline.yaml",
                   opts=["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", sliding_window])
    model = build_model(cfg).eval()
    image = random_image(100, 140, seed=seed).round().to(torch.uint8)
    out = model([{"image": image, "height": 120, "width": 150}])[0]["sem_seg"]
    names = model.test_class_names

    def core(x):
        with identity_normalisation(model.clip):
            return model.predict(x, names)["logits"]

    return cfg, model, image, out, core


def test_model_forward_sliding_window_matches_catseg(synthetic_root):
    """Through SAMMI.forward (SAM parts off): the OVSS protocol's sliding window gives CAT-Seg's scores."""
    cfg, model, image, out, core = _baseline_and_core(True, seed=5)
    s = cfg.MODEL.SAM_MI.INFERENCE
    with torch.no_grad():
        ref = catseg_sliding_window(core, image.float(), model.clip.resolution, 120, 150, kernel=s.WINDOW_SIZE,
                                    overlap=s.WINDOW_OVERLAP, out_res=(s.OUT_RESOLUTION, s.OUT_RESOLUTION))
    assert_same(out, ref)


def test_model_forward_whole_image_matches_catseg(synthetic_root):
    """Through SAMMI.forward (SAM parts off): whole-image inference gives CATSeg.forward's test-time scores
    (normalise, zero-pad to 32, resize to CLIP's resolution, sigmoid, sem_seg_postprocess)."""
    _, model, image, out, core = _baseline_and_core(False, seed=6)
    with torch.no_grad():
        ref = catseg_whole_image(core, image.float(), model.clip.resolution, 32, 120, 150)
    assert_same(out, ref)
