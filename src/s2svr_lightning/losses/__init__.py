"""Losses: unsupervised flow (Eq. 11-17) and the restorer's Charbonnier loss."""

from s2svr_lightning.losses.charbonnier import CharbonnierLoss, charbonnier_loss
from s2svr_lightning.losses.distillation import distillation_loss
from s2svr_lightning.losses.occlusion import forward_backward_occlusion
from s2svr_lightning.losses.photometric import (
    census_distance,
    photometric_loss,
    photometric_map,
    ssim_distance,
)
from s2svr_lightning.losses.smoothness import smoothness_loss
from s2svr_lightning.losses.unsupervised import UnsupervisedFlowLoss

__all__ = [
    "CharbonnierLoss",
    "UnsupervisedFlowLoss",
    "census_distance",
    "charbonnier_loss",
    "distillation_loss",
    "forward_backward_occlusion",
    "photometric_loss",
    "photometric_map",
    "smoothness_loss",
    "ssim_distance",
]
