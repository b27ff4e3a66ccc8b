"""LightningModules of the three training stages (flow teacher, flow student, restorer) and their helpers."""

from s2svr_lightning.lit.flow import FlowModuleBase
from s2svr_lightning.lit.guards import NonFiniteError, raise_if_nonfinite
from s2svr_lightning.lit.image_logging import log_images
from s2svr_lightning.lit.restorer import RestorerModule
from s2svr_lightning.lit.student import StudentFlowModule
from s2svr_lightning.lit.teacher import TeacherFlowModule

__all__ = [
    "FlowModuleBase",
    "NonFiniteError",
    "RestorerModule",
    "StudentFlowModule",
    "TeacherFlowModule",
    "log_images",
    "raise_if_nonfinite",
]
