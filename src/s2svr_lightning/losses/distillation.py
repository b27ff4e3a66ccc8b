"""Distillation loss (Eq. 16): the student's LQ flow imitates the frozen teacher's HQ flow."""

from __future__ import annotations

import torch

from s2svr_lightning.models.warp import resize_flow
from s2svr_lightning.utils import expect_shape

__all__ = ["distillation_loss"]


def distillation_loss(
    student_flow: torch.Tensor,
    teacher_flow: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean_p |F^y(p) - F_u(F^x)(p)|_1`` (Eq. 16, averaged over pixels where the paper sums).

    ``F_u`` resizes the student flow to the teacher's size and scales its values per axis
    (``resize_flow``), so for x4 super-resolution a 1 px LQ motion is compared as 4 HQ pixels. The
    teacher flow is a pseudo-label: no gradient reaches it.

    Args:
        student_flow: ``(B, 2, h, w)`` student flow on the LQ pair, LQ pixels.
        teacher_flow: ``(B, 2, H, W)`` teacher flow on the HQ pair, HQ pixels.
        valid: optional ``(B, 1, H, W)`` weights (e.g. 1 where the teacher is trusted).

    Returns:
        Scalar loss in HQ pixels: the l1 norm of the 2-vector difference, averaged over (valid) pixels.
    """
    expect_shape(student_flow, "(B, 2, h, w)", "student_flow")
    if teacher_flow.dim() != 4 or teacher_flow.shape[:2] != student_flow.shape[:2]:
        raise ValueError(
            f"expected teacher_flow (B, 2, H, W) with the student's batch size, got "
            f"{tuple(teacher_flow.shape)} and {tuple(student_flow.shape)}"
        )
    upsampled = resize_flow(student_flow, tuple(teacher_flow.shape[-2:]))
    diff = (teacher_flow.detach() - upsampled).abs().sum(1, keepdim=True)
    if valid is None:
        return diff.mean()
    if valid.shape != diff.shape:
        raise ValueError(f"expected valid of shape {tuple(diff.shape)}, got {tuple(valid.shape)}")
    valid = valid.detach().to(diff.dtype)
    return (diff * valid).sum() / valid.sum().clamp_min(1e-6)
