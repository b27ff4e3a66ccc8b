"""Recurrent building blocks of S2SVR (paper Sec. 3.2): ConvGRU, residual block, residual stacked ConvGRU."""

from __future__ import annotations

import torch
from torch import nn

from .layout import memory_format_of

__all__ = ["ConvGRU", "ResConvGRU", "ResidualBlock"]


class ConvGRU(nn.Module):
    """Convolutional GRU cell ``F_g``: ``(h (B, C, H, W) or None, x (B, C_in, H, W)) -> h' (B, C, H, W)``.

    ``z = sigmoid(conv_z[h, x])``, ``r = sigmoid(conv_r[h, x])``, ``q = tanh(conv_q[r * h, x])``,
    ``h' = (1 - z) * h + z * q``: three 3x3 convs with bias. A missing state (``None``) is zeros.
    """

    def __init__(self, *, input_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        in_ch = hidden_channels + input_channels
        padding = kernel_size // 2
        self.conv_z = nn.Conv2d(in_ch, hidden_channels, kernel_size, padding=padding)
        self.conv_r = nn.Conv2d(in_ch, hidden_channels, kernel_size, padding=padding)
        self.conv_q = nn.Conv2d(in_ch, hidden_channels, kernel_size, padding=padding)

    def forward(self, h: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[-2:])
            h = h.contiguous(memory_format=memory_format_of(x))
        hx = torch.cat((h, x), dim=1)
        # activations in place on the fresh conv outputs (autograd-safe: convs do not save their output)
        z = self.conv_z(hx).sigmoid_()
        r = self.conv_r(hx).sigmoid_()
        q = self.conv_q(torch.cat((r * h, x), dim=1)).tanh_()
        return h + z * (q - h)  # = (1 - z) * h + z * q in three passes instead of four


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))``, no batch norm, ``(B, C, H, W) -> (B, C, H, W)``.

    Both convs are Kaiming-initialised and scaled by 0.1 (biases zero), as in EDSR/BasicSR, so that a
    deep stack starts close to the identity.
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.relu(self.conv1(x))).add_(x)  # in place on the fresh conv output


class ResConvGRU(nn.Module):
    """One layer of the residual stacked ConvGRU (Eq. 9): a ConvGRU followed by residual blocks.

    ``forward(h_prev, x) -> (output, hidden)`` with ``hidden = F_b(F_g(h_prev, x))`` the recurrent state
    carried to the next time step, and ``output = x + hidden`` (Eq. 9's residual across the layers of a
    stack) when the input has as many channels as the state, else ``output = hidden`` (the first
    encoder layer, which reads 3-channel frames).

    Shapes: ``h_prev (B, C, H, W)`` or None (zeros), ``x (B, C_in, H, W)``; both results ``(B, C, H, W)``.
    """

    def __init__(self, *, input_channels: int, hidden_channels: int, num_blocks: int) -> None:
        super().__init__()
        if num_blocks < 0:
            raise ValueError(f"expected num_blocks >= 0, got {num_blocks}")
        self.gru = ConvGRU(input_channels=input_channels, hidden_channels=hidden_channels)
        self.blocks = nn.Sequential(*(ResidualBlock(channels=hidden_channels) for _ in range(num_blocks)))
        self.residual = input_channels == hidden_channels

    def forward(self, h_prev: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.blocks(self.gru(h_prev, x))
        output = x + hidden if self.residual else hidden
        return output, hidden
