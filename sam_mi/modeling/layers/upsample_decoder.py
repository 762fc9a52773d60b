"""CAT-Seg's upsampling decoder: transposed conv x2, concat projected CLIP guidance, DoubleConv.

Names and shapes follow CAT-Seg's ``Up`` / ``DoubleConv`` (cvlab-kaist/CAT-Seg
cat_seg/modeling/transformer/model.py): ``decoder1.up``, ``decoder1.conv.double_conv.{0,1,3,4}``; ``Up(in, out, g)``
upsamples ``in -> in - g`` channels so that the concatenation with the ``g``-channel guidance has ``in`` channels;
``DoubleConv`` is [Conv3x3 (no bias) -> GroupNorm(mid // 16) -> ReLU] x 2, i.e. GroupNorm(4, 64) / GroupNorm(2, 32)
for the default (64, 32) decoder.

Memory: the guidance map is one per image but CAT-Seg repeats it for every class before the concatenation. The first
convolution is linear (no bias), so ``conv([x; g]) = conv_x(x) + conv_g(g)`` and ``conv_g(g)`` is computed once per
image and broadcast over the T classes (identical up to float rounding), which avoids the ``[B*T, in, 2H, 2W]``
concatenation. The layers keep the memory format of their input; the aggregator feeds them channels-last tensors
(oneDNN's fast convolution layout on CPU and GPU).
"""
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn


class DoubleConv(nn.Module):
    """(conv3x3 no-bias => GroupNorm => ReLU) * 2, CAT-Seg naming ``double_conv.{0,1,3,4}``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        # CAT-Seg uses GroupNorm(mid // 16, mid) after *both* convs (so mid must equal out, as it does by default).
        # Tiny test models with < 16 channels (impossible in CAT-Seg) get one group instead of failing.
        groups = max(1, mid_channels // 16)
        if mid_channels % groups:
            raise ValueError(f"decoder dim {mid_channels} must be divisible by its GroupNorm groups {groups}")
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(groups, mid_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    """ConvTranspose2d(k2, s2) then concat guidance then DoubleConv (CAT-Seg ``Up``).

    Args:
        in_channels: channels of the input and of the concatenation. out_channels: output channels.
        guidance_channels: channels of the (projected) guidance concatenated after upsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, guidance_channels: int) -> None:
        super().__init__()
        if not 0 <= guidance_channels < in_channels:
            raise ValueError(f"guidance channels {guidance_channels} must be in [0, in_channels={in_channels})")
        self.guidance_channels = guidance_channels
        self.up = nn.ConvTranspose2d(in_channels, in_channels - guidance_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, guidance: Optional[Tensor]) -> Tensor:
        """
        Args:
            x: ``[B*T, in, H, W]`` (classes of one image consecutive). guidance: ``[B, g, 2H, 2W]``.
        Returns:
            ``[B*T, out, 2H, 2W]``.
        """
        x = self.up(x)
        first = self.conv.double_conv[0]
        if self.guidance_channels == 0:
            y = first(x)
        else:
            if guidance is None:
                raise ValueError("this decoder stage was built with guidance channels: pass the decoder guidance")
            if guidance.shape[-2:] != x.shape[-2:] or x.shape[0] % guidance.shape[0]:
                raise ValueError(
                    f"decoder guidance {tuple(guidance.shape)} does not match upsampled features {tuple(x.shape)}"
                )
            B = guidance.shape[0]
            T = x.shape[0] // B
            c_x = x.shape[1]
            y = F.conv2d(x, first.weight[:, :c_x], padding=1)
            y_g = F.conv2d(guidance, first.weight[:, c_x:], padding=1)  # once per image
            y = (y.reshape(B, T, *y.shape[1:]) + y_g[:, None]).reshape(B * T, *y.shape[1:])
        return self.conv.double_conv[1:](y)
