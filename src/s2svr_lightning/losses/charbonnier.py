"""Charbonnier loss, the restorer's reconstruction loss (a smooth l1)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["charbonnier_loss", "CharbonnierLoss"]


def charbonnier_loss(pred: torch.Tensor, target: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """``mean(sqrt((pred - target)^2 + eps^2))``.

    With ``eps = 1e-6`` this equals BasicSR's ``CharbonnierLoss`` (which adds ``1e-12`` under the root).
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"expected pred and target of the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if eps <= 0:
        raise ValueError(f"expected eps > 0, got {eps}")
    return torch.sqrt((pred - target).square() + eps * eps).mean()


class CharbonnierLoss(nn.Module):
    """Module form of :func:`charbonnier_loss` (``(B, ...)`` tensors of equal shape -> scalar)."""

    def __init__(self, *, eps: float = 1e-6) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"expected eps > 0, got {eps}")
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return charbonnier_loss(pred, target, eps=self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
