"""Edge-aware first-order smoothness (Eq. 13).

``L_sm(F) = 1/4 sum_{d in x, y} mean_p |d_d F(p)| exp(-alpha |d_d I(p)|)``: flow gradients are penalised
except across image edges, where motion boundaries usually are. Forward differences; the image
gradient is averaged over the colour channels.

Scale: the paper's ``w_sm = 50`` is ARFlow's weight, and ARFlow's first-order term is this one with
means instead of sums, the flow divided by ``min(H, W)``, each direction halved twice (the 1/4) and
``alpha = 10`` on images in [0, 1]. We keep that scale, so that ``w_sm = 50`` means what it meant there:
with sums, or without the 1/4, the smoothness term outweighs the photometric one and the network
settles on a constant flow.
"""

from __future__ import annotations

import torch

from s2svr_lightning.utils import expect_shape

__all__ = ["smoothness_loss"]


def smoothness_loss(
    flow: torch.Tensor,
    image: torch.Tensor,
    *,
    edge_alpha: float = 10.0,
    normalize: bool = True,
) -> torch.Tensor:
    """First-order edge-aware smoothness of Eq. 13 at ARFlow's scale (see the module notes).

    Args:
        flow: ``(B, 2, H, W)`` flow in pixels.
        image: ``(B, C, H, W)`` the frame the flow starts from, in [0, 1].
        edge_alpha: ``alpha`` in the edge weight ``exp(-alpha |dI|)``. Eq. 13 writes 1, which on images
            in [0, 1] weights every pixel almost alike; ARFlow (the weights' source) uses 10.
        normalize: divide the flow by ``min(H, W)`` first, as ARFlow does; this is the scale at which
            the paper's (ARFlow's) weight ``w_sm = 50`` was tuned, and keeps the term independent of the
            resolution. False penalises raw pixel gradients.

    Returns:
        Scalar: ``(mean(w_x |dx F|) + mean(w_y |dy F|)) / 4``; 0 for a constant flow.
    """
    expect_shape(flow, "(B, 2, H, W)", "flow")
    if image.dim() != 4 or image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"expected image (B, C, H, W) matching flow {tuple(flow.shape)}, got {tuple(image.shape)}"
        )
    h, w = flow.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"expected H, W >= 2 for flow gradients, got {(h, w)}")
    if normalize:
        flow = flow / min(h, w)
    flow_dx = flow[..., :, 1:] - flow[..., :, :-1]
    flow_dy = flow[..., 1:, :] - flow[..., :-1, :]
    # the weights are constants of the image: no gradient flows into the frames
    image = image.detach()
    weight_x = torch.exp(-edge_alpha * (image[..., :, 1:] - image[..., :, :-1]).abs().mean(1, keepdim=True))
    weight_y = torch.exp(-edge_alpha * (image[..., 1:, :] - image[..., :-1, :]).abs().mean(1, keepdim=True))
    return 0.25 * ((weight_x * flow_dx.abs()).mean() + (weight_y * flow_dy.abs()).mean())
