"""The SAMMI meta-architecture at tiny scale: registry, inference, losses, stages, injection and fallback."""
import pytest
import torch
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from conftest import tiny_cfg


def random_image(h=128, w=160, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module")
def stage2_model(synthetic_root):
    torch.manual_seed(0)
    return build_model(tiny_cfg()).eval()


def test_sammi_is_registered():
    assert "SAMMI" in META_ARCH_REGISTRY


def test_tiny_inference_on_random_image(stage2_model):
    out = stage2_model([{"image": random_image(), "height": 100, "width": 120}])[0]
    num_classes = len(stage2_model.test_class_names)
    assert out["sem_seg"].shape == (num_classes, 100, 120)
    assert torch.isfinite(out["sem_seg"]).all()
    assert (out["sem_seg"] >= 0).all() and (out["sem_seg"] <= 1).all()  # sigmoid scores
    assert out["sam_mi"]["num_points"] > 0


def test_masks_are_injected_and_dmi_changes_logits(stage2_model):
    images = random_image(seed=1)[None].float()
    names = stage2_model.test_class_names
    with torch.no_grad():
        with_dmi = stage2_model.predict(images, names)
        head = stage2_model.cost_head
        low, high = head.dmi_low, head.dmi_high
        head.dmi_low, head.dmi_high = None, None
        try:
            without = stage2_model.predict(images, names)
        finally:
            head.dmi_low, head.dmi_high = low, high
    assert sum(with_dmi["masks"].num_masks) > 0
    assert not torch.allclose(with_dmi["logits"], without["logits"])


def test_no_masks_falls_back_to_uninjected_path(synthetic_root):
    torch.manual_seed(0)
    # an impossible IoU threshold: SAM returns no mask, the model must still predict, un-injected
    model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.PRED_IOU_THRESH", 1e9])).eval()
    x = {"image": random_image(seed=2), "height": 128, "width": 160}
    out = model([x])[0]
    assert out["sam_mi"]["num_masks"] == 0 and out["sam_mi"]["injected"] is False
    model.cost_head.dmi_low, model.cost_head.dmi_high = None, None
    plain = model([x])[0]
    assert torch.allclose(out["sem_seg"], plain["sem_seg"], atol=1e-6)


def test_training_losses_and_gradients(synthetic_root):
    """Every trained stage gets gradients. The masks are the label map's regions (oracle masks): a random tiny
    SAM's masks are speckles that vanish at the 1/16 grid of the low-frequency injection."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.ORACLE_MASKS", True])).train()
    sem_seg = torch.zeros(128, 128, dtype=torch.long)
    sem_seg[64:, :] = 1
    sem_seg[:, 80:] = 2
    sem_seg[:10] = 255
    batch = [{"image": random_image(128, 128, s), "sem_seg": sem_seg} for s in range(2)]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_tspp_ce", "loss_tspp_mse"}
    sum(losses.values()).backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for prefix in ("cost_head.aggregator.", "prompter.head.", "cost_head.dmi_low.", "cost_head.dmi_high.",
                   "cost_head.upsample1.", "clip.model.visual."):
        assert any(n.startswith(prefix) for n in grads), prefix
    assert not any(n.startswith("mask_generator.") for n in grads)
    # Sec. 3.2: TSPP's loss does not reach CLIP's visual encoder
    model.zero_grad()
    (losses := model(batch))["loss_tspp_ce"].backward()
    visual = [p.grad for n, p in model.named_parameters() if n.startswith("clip.model.visual.")]
    assert all(g is None or g.abs().sum() == 0 for g in visual)


def test_stage1_trains_tspp_only(synthetic_root):
    model = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_stage1.yaml")).train()
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompter"}
    sem_seg = torch.randint(0, len(model.train_class_names), (128, 128))
    losses = model([{"image": random_image(128, 128), "sem_seg": sem_seg}])
    assert set(losses) == {"loss_tspp_ce", "loss_tspp_mse"}


def test_vocabulary_and_bad_input(stage2_model):
    with pytest.raises(ValueError, match="empty"):
        stage2_model.set_vocabulary([])
    with pytest.raises(ValueError, match="unique"):
        stage2_model.set_vocabulary(["sky", "grass", "sky"])
    old = stage2_model.test_class_names
    try:
        stage2_model.set_vocabulary(["cat", "dog", "sky"])
        out = stage2_model([{"image": random_image(), "height": 64, "width": 80}])[0]
        assert out["sem_seg"].shape == (3, 64, 80)
    finally:
        stage2_model.set_vocabulary(old)
    with pytest.raises(ValueError, match="RGB"):
        stage2_model([{"image": torch.zeros(1, 64, 64, dtype=torch.uint8)}])


def test_sliding_window_protocol(synthetic_root):
    model = build_model(
        tiny_cfg(opts=["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", True, "MODEL.SAM_MI.AGGREGATOR.POOLING_SIZES", [1, 1]])
    ).eval()
    out = model([{"image": random_image(150, 200), "height": 150, "width": 200}])[0]
    assert out["sem_seg"].shape == (len(model.test_class_names), 150, 200)
    assert torch.isfinite(out["sem_seg"]).all()


def test_autocast_inference_matches_float32(synthetic_root):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    x = {"image": random_image(seed=4), "height": 128, "width": 160}
    full = model([x])[0]["sem_seg"]
    model.inference_amp = True  # bfloat16 on the CPU
    half = model([x])[0]["sem_seg"]
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    # an untrained model's classes are near-tied, so compare scores rather than argmax
    assert (half - full).abs().max() < 0.1 and (half - full).abs().mean() < 0.02
    assert not torch.equal(half, full)  # autocast really ran in bfloat16


def test_frozen_sam_stays_out_of_checkpoints(stage2_model, tmp_path):
    """SAM's weights come from MODEL.SAM_MI.SAM.CHECKPOINT, not from SAM-MI's checkpoints."""
    from detectron2.checkpoint import DetectionCheckpointer

    state = stage2_model.state_dict()
    assert state and not any(k.startswith("mask_generator.") for k in state)
    assert any(n.startswith("mask_generator.") for n, _ in stage2_model.named_parameters())
    DetectionCheckpointer(stage2_model, save_dir=str(tmp_path)).save("ckpt")
    torch.manual_seed(123)
    other = build_model(tiny_cfg()).eval()
    own_sam = {n: p.clone() for n, p in other.mask_generator.named_parameters()}
    result = other.load_state_dict(torch.load(tmp_path / "ckpt.pth", weights_only=False)["model"], strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []  # strict load passes without SAM keys
    assert all(torch.equal(p, own_sam[n]) for n, p in other.mask_generator.named_parameters())  # SAM untouched
    assert torch.equal(other.cost_head.aggregator.head.weight, stage2_model.cost_head.aggregator.head.weight)


def test_checkpoints_of_the_pre_stage_layout_load(stage2_model, tmp_path):
    """Keys written before the stages existed (``tspp.``, ``aggregator.``, ``dmi_low.`` ... on SAMMI) load."""
    from sam_mi.modeling.checkpoint_keys import LEGACY_PREFIXES

    legacy = {}
    for key, value in stage2_model.state_dict().items():
        for old, new in LEGACY_PREFIXES:
            if key.startswith(new):
                key = old + key[len(new):]
                break
        legacy[key] = value
    assert "tspp.embed.0.weight" in legacy and "aggregator.head.weight" in legacy and "upsample1.weight" in legacy
    torch.manual_seed(321)
    other = build_model(tiny_cfg()).eval()
    result = other.load_state_dict(legacy, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for key, value in stage2_model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_oracle_masks_are_the_label_regions(synthetic_root):
    """MODEL.SAM_MI.SAM.ORACLE_MASKS: one mask per connected region of the labels, in the frame of the image
    (whole-image inference pads the labels like the image)."""
    from sam_mi.modeling.mask_proposals import region_masks

    labels = torch.zeros(40, 60, dtype=torch.long)
    labels[:, 30:] = 1
    labels[4:14, 4:14] = 1  # a second region of class 1, inside class 0's
    labels[30:, :] = 255
    masks = region_masks(labels, (20, 30))
    assert masks.shape == (3, 20, 30)
    assert sorted(int(m.sum()) for m in masks) == [5 * 5, 15 * 15 - 5 * 5, 15 * 15]  # in cells of 2x2 pixels
    model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.ORACLE_MASKS", True])).eval()
    x = {"image": random_image(100, 120, seed=5), "sem_seg": torch.zeros(100, 120, dtype=torch.long)}
    x["sem_seg"][:, 60:] = 3
    out = model([x])[0]["sam_mi"]
    assert out["num_sam_masks"] == 2 and out["num_points"] == 0
    with pytest.raises(ValueError, match="ground truth"):
        model([{"image": random_image(100, 120, seed=5)}])


def test_stage1_evaluation_scores_tspp_mask_output(synthetic_root):
    """Table 8's mIoU column: after stage 1, evaluation scores TSPP's own M^text (INFERENCE.SCORES "tspp"),
    without SAM; the un-weighted L_mse is logged for its other column."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(tiny_cfg("configs/tiny/sam_mi_tiny_stage1.yaml"))
    assert model.scores == "tspp" and model.mask_generator is None
    x = {"image": random_image(96, 128, seed=3), "height": 96, "width": 128}
    out = model.eval()([x])[0]
    with torch.no_grad():
        logits = model.predict(x["image"][None].float(), model.test_class_names, stage1=True)["tspp_logits"]
    assert out["sem_seg"].shape == (logits.shape[1], 96, 128) and out["sam_mi"]["num_points"] == 0
    model.train()
    with EventStorage() as storage:
        losses = model([{"image": random_image(128, 128), "sem_seg": torch.randint(0, 3, (128, 128))}])
    logged = storage.history("tspp/l_mse").latest()
    assert logged == pytest.approx(float(losses["loss_tspp_mse"]) / model.prompter.lambda_mse)


def test_oracle_mirrored_masks_are_the_regions_of_the_mirrored_labels(synthetic_root):
    """MODEL.SAM_MI.SAM.ORACLE_MIRRORED, the oracle's control: the masks of the labels mirrored within the image
    (before whole-image inference pads a 100-px-wide image to 128, so that they stay on the image)."""
    labels = torch.zeros(64, 100, dtype=torch.long)
    labels[:, 10:30] = 2
    labels[5:20, 50:90] = 4
    image = random_image(64, 100, seed=2)
    opts = ["MODEL.SAM_MI.SAM.ORACLE_MASKS", True, "MODEL.SAM_MI.SMAGG.ENABLED", False]
    torch.manual_seed(0)
    plain = build_model(tiny_cfg(opts=opts)).eval()
    torch.manual_seed(0)
    mirrored = build_model(tiny_cfg(opts=opts + ["MODEL.SAM_MI.SAM.ORACLE_MIRRORED", True])).eval()

    def masks(model, lab):
        out = model.inference_one({"image": image, "sem_seg": lab}, keep_intermediates=True)
        return out["intermediates"]["masks"].masks[0]  # [N, 4h, 4w] in the padded frame

    aligned, flipped = masks(plain, labels), masks(mirrored, labels)
    assert int(aligned.flatten(1).any(1).sum()) == 4  # class 0 left and right of the band, the band, the box
    assert torch.equal(flipped, masks(plain, labels.flip(-1))) and not torch.equal(flipped, aligned)
    # on the image (100 of 128 columns), never on the padding
    assert not flipped[..., (100 * flipped.shape[-1]) // 128 + 1:].any()


def test_masks_reach_dmi_in_the_feature_frame(synthetic_root):
    """In training, the oracle's regions reach both injections (Eq. 8-10 at CLIP's grid, Eq. 11-12 at both guidance
    maps) where they lie in the image: a 40-px band at the left of a 128-px crop covers the cells whose area is at
    least half in it (8 x 8: columns 0-2, 16 x 16: 0-4, 32 x 32: 0-9), a box at rows 80-127 / columns 64-127 the
    bottom-right quarter's lower part. A transposed, mirrored or shifted frame fails it."""
    from detectron2.utils.events import EventStorage

    model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.ORACLE_MASKS", True, "MODEL.SAM_MI.SMAGG.ENABLED", False]))
    seen = {}
    for name, module in (("low", model.cost_head.dmi_low), ("high0", model.cost_head.dmi_high[0]),
                         ("high1", model.cost_head.dmi_high[1])):
        module.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[1][0].clone()))
    labels = torch.zeros(128, 128, dtype=torch.long)
    labels[:, :40] = 1
    labels[80:, 64:] = 2
    with EventStorage():
        model.train()([{"image": random_image(128, 128, seed=1), "sem_seg": labels}])
    for name, band_cols in (("low", 3), ("high0", 5), ("high1", 10)):
        masks = seen[name]  # [N, s, s]
        s = masks.shape[-1]
        band = torch.zeros(s, s, dtype=torch.bool)
        band[:, :band_cols] = True
        box = torch.zeros(s, s, dtype=torch.bool)
        box[round(s * 80 / 128):, s // 2:] = True
        assert any(torch.equal(m, band) for m in masks), name
        assert any(torch.equal(m, box) for m in masks), name
