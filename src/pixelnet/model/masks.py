"""Autoregressive masks for convolutions over raster order and colour channels.

Pixels are generated row by row, left to right, and within a pixel channel by channel (R, then G, then B).  A colour
model's feature maps are split into `groups` contiguous blocks of channels, block g belonging to image channel g.  A
k x k mask (k odd, centre k // 2) keeps every tap in the rows above the centre and left of it in the centre row; at
the centre tap an output in group g reads an input in group h when h < g (type "A", the first layer: a sub-pixel never
sees itself) or h <= g (type "B", later layers).  With one group (grayscale) type A drops the centre tap, B keeps it.
"""

from __future__ import annotations

import torch


def channel_group(index: int, n_channels: int, groups: int) -> int:
    """The group (image channel) that feature `index` of `n_channels` belongs to."""
    return index * groups // n_channels


def conv_mask(
    *, mask_type: str, in_channels: int, out_channels: int, kernel_size: int, groups: int
) -> torch.Tensor:
    """A {0, 1} mask shaped like a conv weight: (out_channels, in_channels, k, k)."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    k = kernel_size
    c = k // 2
    mask = torch.zeros(out_channels, in_channels, k, k)
    mask[:, :, :c, :] = 1  # every row above the centre
    mask[:, :, c, :c] = 1  # the centre row, left of the centre
    out_group = torch.tensor([channel_group(o, out_channels, groups) for o in range(out_channels)])
    in_group = torch.tensor([channel_group(i, in_channels, groups) for i in range(in_channels)])
    if mask_type == "A":
        centre = out_group[:, None] > in_group[None, :]
    else:
        centre = out_group[:, None] >= in_group[None, :]
    mask[:, :, c, c] = centre.float()
    return mask
