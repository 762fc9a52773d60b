"""Sliding-window evaluation with SAM once per image (the paper's 1024x1024 SAM input, Sec. 4.1): view points
land where they belong in the image, masks come back into each view's frame, and the encoder runs once."""
import torch
from detectron2.modeling import build_model
from torch import nn

from conftest import tiny_cfg

from sam_mi.modeling.inference import sliding_window_boxes
from sam_mi.modeling.mask_proposals import propose_masks_in_views


class LeftHalf(nn.Module):
    """Every prompt gets one mask: the left half of the image (x < W/2), at the requested resolution."""

    def __init__(self):
        super().__init__()
        self.points, self.encoded = [], []

    def encode(self, images, use_cache=False):
        self.encoded.append(tuple(images.shape))
        return images.new_zeros(images.shape[0], 1, 1, 1)

    def generate(self, embedding, points, image_size, out_size):
        self.points.append(points.clone())
        xs = (torch.arange(out_size[1]) + 0.5) / out_size[1]
        mask = (xs < 0.5)[None, None, :].expand(1, *out_size).clone()
        return mask, torch.ones(1)


def test_view_masks_are_the_image_mask_cropped_and_points_map_into_the_image():
    h, w, out = 150, 210, (32, 32)
    boxes = sliding_window_boxes((h, w), 128, 0.5, 192)  # the tiny protocol: 4 crops + the whole image
    pts = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    gen = LeftHalf()
    proposals = propose_masks_in_views(gen, torch.zeros(3, h, w), boxes, lambda i: pts,
                                       torch.zeros(len(boxes), 2, 8, 8), out, alpha_sma=None, keep_intermediates=True)
    assert gen.encoded == [(1, 3, h, w)]  # the encoder saw the whole image, once
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        expected_pts = torch.stack([(x0 + pts[:, 0] * (x1 - x0)) / w, (y0 + pts[:, 1] * (y1 - y0)) / h], 1)
        assert torch.allclose(gen.points[i], expected_pts)
        x_centres = x0 + (torch.arange(out[1]) + 0.5) / out[1] * (x1 - x0)
        expected = (x_centres < w / 2)[None].expand(*out)
        got = proposals.sam_masks[i]
        if expected.any():
            assert got.shape[0] == 1 and torch.equal(got[0], expected), i
        else:
            assert got.shape[0] == 0, i  # the mask leaves this view: dropped
    assert torch.allclose(gen.points[-1], pts)  # the global view is the image itself


def test_sliding_window_runs_sams_encoder_once_per_image(synthetic_root):
    cfg = tiny_cfg(opts=["MODEL.SAM_MI.INFERENCE.SLIDING_WINDOW", True])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen = []
    model.mask_generator.sam.image_encoder.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    x = {"image": torch.randint(0, 256, (3, 150, 210), dtype=torch.uint8), "file_name": "a.png"}
    once = model([x])[0]
    assert seen == [1]
    model.sam_per_view = True
    per_view = model([x])[0]
    assert seen == [1, 5]  # 4 crops + the global view
    assert once["sam_mi"]["num_points"] == per_view["sam_mi"]["num_points"]  # same prompts, other SAM input
