"""PWC-Lite, the lightweight PWC-Net of ARFlow (Liu et al., 2020): S2SVR's flow estimator F_o (Eq. 8, 10).

A 6-level feature pyramid, a +-4 px correlation, ONE "reduce dense" flow estimator and ONE dilated
context network shared by every level, decoding coarse to fine from 1/64 down to 1/4 of the input, and a
x4 upsampling to the input size. 2,236,660 parameters.

Departures from ARFlow, each deliberate:
- ARFlow needs H and W to be multiples of 64. Here any H, W >= 16 works: the inputs are replicate-padded
  on the bottom and right to the next multiple of 64 and every flow is cropped back. Padding and cropping
  do not change the pixel scale, so no flow rescaling is needed.
- Weights keep PyTorch's default initialisation. ARFlow's ``init_weights`` loops over ``(name, module)``
  tuples, so its ``isinstance`` checks never match and its networks trained "from scratch" really used the
  default init; we state that instead of imitating a dead code path.
- Each feature map is standardised before the correlation (``normalize_features=True``): per frame and
  channel the spatial mean is removed, then the map is divided by its root mean square over channels and
  pixels. No parameters. ARFlow correlates the raw LeakyReLU features: their cost volume is dominated by
  the features' positive mean (it peaks at zero offset whatever the motion) and, at PyTorch's default
  init, is ~1e-3 against ~5e-2 for the other inputs of the estimator. Measured on 64 px crops of
  photographs with random translations up to 6 px, 300 Adam steps: supervised EPE 5.10 -> 5.10 without
  the standardisation (the network learns only the mean flow) and 5.10 -> 2.40 with it; unsupervised
  (photometric + smoothness) 5.10 -> 1.82 (``benchmarks/flow_quality.py`` measures the stages).
  ``normalize_features=False`` is ARFlow's network exactly, for porting its weights.
- ``min_level_size`` (default 1: every level, as ARFlow) starts decoding at the coarsest level with at
  least that many pixels on its shorter side and leaves coarser levels at zero flow. ARFlow always
  decodes from 1/64, which on its 256+ px training crops is >= 4 px; on small frames those levels are
  1-4 px, their +-4 px correlation sees mostly zero padding, and a standardised 1x1 map is all zeros.
  Measured on 64 px synthetic video (teacher, 600 steps, cosine lr from 1e-3, seeds 0 / 1): held-out
  EPE / zero flow 0.722 / 0.643 decoding all five levels, 0.707 / 0.649 with ``min_level_size=8``, which
  also takes 23 % less time per step. Not the default: the skipped levels' pyramid convolutions then
  get no gradient, which DDP rejects unless ``find_unused_parameters`` is set, and the gain is speed,
  not accuracy. Frames of 512 px and more decode every level either way.
- The correlation is plain PyTorch (a loop over the 81 offsets on a zero-padded tensor), which equals the
  CUDA kernel and runs on any device. On channels_last features each offset is a reduction over the
  innermost (channel) axis, and the loop beat both a row-at-a-time ``unfold`` and an ``einsum`` over an
  unfolded window (benchmarks/OPTIMISATIONS.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layout import is_channels_last
from .warp import flow_warp, resize_flow

__all__ = ["PWCLite", "correlation", "init_flownet_", "pwclite", "standardize_features"]

_PYRAMID_CHANNELS = (16, 32, 64, 96, 128, 192)
_NUM_DECODED_LEVELS = 5  # 1/64, 1/32, 1/16, 1/8, 1/4: ARFlow stops at 1/4 and upsamples x4
_MULTIPLE = 64  # the coarsest pyramid level is 1/64 of the (padded) input


def _conv(
    in_ch: int, out_ch: int, *, kernel_size: int = 3, stride: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv (with bias, 'same' padding) + LeakyReLU(0.1): ARFlow's building unit."""
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation),
        nn.LeakyReLU(0.1, inplace=True),
    )


def correlation(f1: torch.Tensor, f2: torch.Tensor, *, max_displacement: int = 4) -> torch.Tensor:
    """Cost volume between ``f1`` and ``f2`` ``(B, C, H, W)`` -> ``(B, (2d+1)^2, H, W)``.

    Channel ``(dy + d) * (2d + 1) + (dx + d)`` (dy-major) holds the channel mean of
    ``f1(p) * f2(p + (dx, dy))``, with ``f2`` zero outside the image.
    """
    d = max_displacement
    _, _, h, w = f1.shape
    f2_padded = F.pad(f2, (d, d, d, d))
    costs = [
        (f1 * f2_padded[:, :, dy : dy + h, dx : dx + w]).mean(dim=1)
        for dy in range(2 * d + 1)
        for dx in range(2 * d + 1)
    ]
    if is_channels_last(f1):  # stack the offsets innermost: a channels_last volume
        return torch.stack(costs, dim=-1).permute(0, 3, 1, 2)
    return torch.stack(costs, dim=1)


def standardize_features(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``(B, C, H, W)`` -> zero spatial mean per channel, unit root mean square per sample."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    # eps inside the root: sqrt'(0) is infinite, and a 1x1 map is all zeros after centring
    return x * torch.rsqrt(x.square().mean(dim=(1, 2, 3), keepdim=True) + eps)


class FeaturePyramid(nn.Module):
    """Image ``(B, 3, H, W)`` -> features at 1/2 .. 1/64, finest first (16, 32, 64, 96, 128, 192 channels)."""

    def __init__(self, *, channels: tuple[int, ...] = _PYRAMID_CHANNELS) -> None:
        super().__init__()
        in_chs = (3,) + tuple(channels[:-1])
        self.levels = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, stride=2), _conv(cout, cout))
            for cin, cout in zip(in_chs, channels)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class FlowEstimatorReduce(nn.Module):
    """ARFlow's "reduce dense" estimator: each conv sees the outputs of the two convs before it.

    Input ``(B, 115, h, w)`` = cost volume (81) + 1x1-reduced image-1 features (32) + current flow (2).
    Returns ``(features (B, 32, h, w), residual flow (B, 2, h, w))``.
    """

    def __init__(self, *, in_channels: int = 115) -> None:
        super().__init__()
        self.conv1 = _conv(in_channels, 128)
        self.conv2 = _conv(128, 128)
        self.conv3 = _conv(128 + 128, 96)
        self.conv4 = _conv(128 + 96, 64)
        self.conv5 = _conv(96 + 64, 32)
        self.predict_flow = nn.Conv2d(64 + 32, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        x3 = self.conv3(torch.cat((x1, x2), dim=1))
        x4 = self.conv4(torch.cat((x2, x3), dim=1))
        x5 = self.conv5(torch.cat((x3, x4), dim=1))
        flow = self.predict_flow(torch.cat((x4, x5), dim=1))
        return x5, flow


class ContextNetwork(nn.Module):
    """Dilated refinement ``(B, 32 + 2, h, w)`` -> residual flow ``(B, 2, h, w)``; dilations 1 2 4 8 16 1."""

    def __init__(self, *, in_channels: int = 34) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            _conv(in_channels, 128, dilation=1),
            _conv(128, 128, dilation=2),
            _conv(128, 128, dilation=4),
            _conv(128, 96, dilation=8),
            _conv(96, 64, dilation=16),
            _conv(64, 32, dilation=1),
            nn.Conv2d(32, 2, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


def _check_image(name: str, x: object) -> torch.Tensor:
    if (
        not isinstance(x, torch.Tensor)
        or x.dim() != 4
        or x.shape[1] != 3
        or x.shape[-2] < 16
        or x.shape[-1] < 16
        or not x.is_floating_point()
    ):
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected {name} of shape (B, 3, H, W) with H, W >= 16, float in [0, 1], got {got}")
    return x


class PWCLite(nn.Module):
    """Two-frame flow estimator ``(im1, im2)`` -> flow ``im1 -> im2`` in pixels (docs/contracts.md).

    Args:
        max_displacement: correlation radius in pixels at every level (ARFlow: 4, 81 channels).
        normalize_features: standardise the features entering the correlation (see the module notes);
            False is ARFlow's network exactly.
        min_level_size: decoding starts at the coarsest level whose shorter side has at least this many
            pixels (the finest level, 1/4, is always decoded); coarser levels output zero flow. The
            default ``1`` decodes all five levels, as ARFlow does (see the module notes).

    Inputs are RGB in [0, 1], ``(B, 3, H, W)`` with H, W >= 16. ``forward`` returns ``(B, 2, H, W)``;
    see :meth:`forward` for the backward flow and the pyramid.
    """

    def __init__(
        self, *, max_displacement: int = 4, normalize_features: bool = True, min_level_size: int = 1
    ) -> None:
        super().__init__()
        if max_displacement < 1 or min_level_size < 1:
            raise ValueError(
                f"expected max_displacement >= 1 and min_level_size >= 1, got {max_displacement}, "
                f"{min_level_size}"
            )
        self.max_displacement = max_displacement
        self.normalize_features = normalize_features
        self.min_level_size = min_level_size
        corr_channels = (2 * max_displacement + 1) ** 2
        self.feature_pyramid = FeaturePyramid()
        # one 1x1 conv per decoded level (1/64 .. 1/4) to 32 channels; estimator and context are shared
        decoded = _PYRAMID_CHANNELS[::-1][:_NUM_DECODED_LEVELS]
        self.conv_1x1 = nn.ModuleList(_conv(ch, 32, kernel_size=1) for ch in decoded)
        self.flow_estimator = FlowEstimatorReduce(in_channels=corr_channels + 32 + 2)
        self.context_network = ContextNetwork(in_channels=32 + 2)

    def _decode(self, pyr1: list[torch.Tensor], pyr2: list[torch.Tensor]) -> list[torch.Tensor]:
        """Coarse-to-fine decoding; returns flows at 1/4 .. 1/64 (finest first), pixels of each level."""
        flows: list[torch.Tensor] = []
        flow = None
        coarse_first = list(zip(pyr1[::-1], pyr2[::-1]))[:_NUM_DECODED_LEVELS]
        for level, (x1, x2) in enumerate(coarse_first):
            b, _, h, w = x1.shape
            if min(h, w) < self.min_level_size and level < len(coarse_first) - 1:
                flows.append(x1.new_zeros(b, 2, h, w))  # too small to match on: left at zero flow
                continue
            if flow is None:
                flow = x1.new_zeros(b, 2, h, w)
                x2_warped = x2
            else:
                # the padded size is a multiple of 64, so each level is exactly twice the previous one
                flow = resize_flow(flow, (h, w))
                x2_warped = flow_warp(x2, flow, padding_mode="border")
            c1, c2 = (
                (standardize_features(x1), standardize_features(x2_warped))
                if self.normalize_features
                else (x1, x2_warped)
            )
            cost = F.leaky_relu(correlation(c1, c2, max_displacement=self.max_displacement), 0.1)
            features, residual = self.flow_estimator(torch.cat((cost, self.conv_1x1[level](x1), flow), dim=1))
            flow = flow + residual
            flow = flow + self.context_network(torch.cat((features, flow), dim=1))
            flows.append(flow)
        return flows[::-1]

    def forward(
        self,
        im1: torch.Tensor,
        im2: torch.Tensor,
        *,
        with_backward: bool = False,
        return_pyramid: bool = False,
    ):
        """Estimate the flow from ``im1`` to ``im2``.

        Args:
            im1, im2: ``(B, 3, H, W)`` RGB in [0, 1], H, W >= 16, same shape.
            with_backward: also decode the swapped pair (feature pyramids computed once).
            return_pyramid: return every decoded level instead of only the finest.

        Returns:
            ``flow12 (B, 2, H, W)``; with ``with_backward`` the tuple ``(flow12, flow21)``. With
            ``return_pyramid`` a list of 5 such items, finest first: level k has size
            ``(ceil(H / 2^k), ceil(W / 2^k))`` (level 0 is the input size) and is in pixels of its own
            size (ARFlow's outputs, each upsampled x4 from 1/4 .. 1/64 of the padded input).
        """
        _check_image("im1", im1)
        _check_image("im2", im2)
        if im1.shape != im2.shape:
            raise ValueError(
                f"expected im1 and im2 of the same shape, got {tuple(im1.shape)} and {tuple(im2.shape)}"
            )
        b, _, h, w = im1.shape
        pad_h = -h % _MULTIPLE
        pad_w = -w % _MULTIPLE
        images = torch.cat((im1, im2), dim=0)
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        pyramid = self.feature_pyramid(images)
        pyr1 = [f[:b] for f in pyramid]
        pyr2 = [f[b:] for f in pyramid]
        if with_backward:
            # decode both directions as one batch of 2B: same weights, one pass
            pyr1, pyr2 = (
                [torch.cat((f1, f2), dim=0) for f1, f2 in zip(pyr1, pyr2)],
                [torch.cat((f2, f1), dim=0) for f1, f2 in zip(pyr1, pyr2)],
            )
        outputs = []
        for k, flow in enumerate(self._decode(pyr1, pyr2)):
            hp, wp = flow.shape[-2:]
            flow = resize_flow(flow, (4 * hp, 4 * wp))  # ARFlow: x4, align_corners=True, values x4
            out_h, out_w = -(-h // 2**k), -(-w // 2**k)
            flow = flow[..., :out_h, :out_w]
            outputs.append((flow[:b], flow[b:]) if with_backward else flow)
            if not return_pyramid:
                break
        return outputs if return_pyramid else outputs[0]


def pwclite(*, normalize_features: bool = True, min_level_size: int = 1) -> PWCLite:
    """PWC-Lite as used by S2SVR (paper Sec. 3.3 and Table 4): 2,236,660 parameters, +-4 px correlation.

    ``normalize_features=False`` is ARFlow's network exactly.
    """
    return PWCLite(max_displacement=4, normalize_features=normalize_features, min_level_size=min_level_size)


@torch.no_grad()
def init_flownet_(net: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise a flow network in place before training.

    ``"default"`` keeps the network's own initialisation (PyTorch's default, as ARFlow's PWC-Lite really
    had). ``"kaiming"``: Kaiming-normal weights for LeakyReLU(0.1) and zero biases on every convolution,
    and zero weights on the convolutions with 2 output channels (the flow predictors), so the untrained
    network predicts zero flow. PyTorch's default init shrinks the activations at every layer, so the
    cost volume starts ~1e-3 against features ~5e-2 and is learnt to be read only slowly; Kaiming
    keeps it O(0.1) from the start.
    """
    if scheme == "default":
        return net
    if scheme != "kaiming":
        raise ValueError(f"expected flownet_init 'default' or 'kaiming', got {scheme!r}")
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            if module.out_channels == 2:
                nn.init.zeros_(module.weight)
            else:
                nn.init.kaiming_normal_(module.weight, a=0.1, nonlinearity="leaky_relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return net
