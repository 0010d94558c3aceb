"""`simreg`: distil a frozen SSL teacher into a student by feature regression (Navaneet et al., SimReg,
BMVC 2022, arXiv 2201.05131), run by `leanssl distill TEACHER_RUN --student BACKBONE`.

One augmented view per image per step. The teacher (the backbone of a finished leanssl run, frozen,
always in eval mode) sees that same view, mapped to its own resolution and channels as transfer
evaluation maps images; the student's features go through a prediction MLP and regress the
teacher's features:

    L = ‖normalize(h(f_s(v))) − normalize(f_t(map(v)))‖²   (mean over the batch; = 2 − 2·cos)

The head h is deeper than a projection head (SimReg: 4 layers, the depth that helped most) and is
used only for distillation: the run's exported backbone is the student alone.

The teacher's weights are part of the checkpoint (a resumed run does not depend on the teacher
folder staying as it was, though it is read again to build the network).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import LeansslError
from ..models.heads import mlp
from ..options import opt
from .base import Method


@dataclass
class SimregConfig:
    teacher: str = opt("", "the teacher's run folder (`leanssl distill TEACHER`'s argument)", flag=None)
    head_layers: int = opt(4, "depth of the student's prediction MLP, dropped from the export (SimReg's deeper head)")
    proj_hidden: int | None = opt(None, "the prediction MLP's hidden width (default: 2048 for >= 512-d teachers, "
                                        "else 4x the teacher's width)")


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between L2-normalised prediction and (detached) target."""
    p, t = F.normalize(pred.float(), dim=1), F.normalize(target.float().detach(), dim=1)
    return (p - t).pow(2).sum(1).mean()


class SimReg(Method):
    name = "simreg"
    description = "distil a trained run's frozen backbone into a student by feature regression (leanssl distill)"
    needs_teacher = True
    Config = SimregConfig
    default_lr = 0.5  # per 256, as essl: the same single-view SGD loop

    def __init__(self, backbone, data, cfg: SimregConfig | None = None, aug=None):
        super().__init__(backbone, data, aug)
        from ..export import load_run_backbone as load_backbone  # late: export imports the training package

        self.cfg = cfg = cfg or self.Config()
        if not cfg.teacher:
            raise LeansslError("simreg needs a teacher: leanssl distill TEACHER_RUN --student BACKBONE --data SPEC")
        if cfg.head_layers < 1:
            raise LeansslError(f"--head-layers must be at least 1, got {cfg.head_layers}")
        teacher, _, info = load_backbone(Path(cfg.teacher))
        self.teacher = teacher.requires_grad_(False).eval()
        self.teacher_info = info
        width = teacher.out_dim
        hidden = cfg.proj_hidden or (2048 if width >= 512 else 4 * width)
        self.head = mlp(backbone.out_dim, hidden, width, layers=cfg.head_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm keeps the statistics it was trained with
        return self

    def teacher_input(self, v: torch.Tensor) -> torch.Tensor:
        """The student's normalised view as the teacher's input: same pixels, the teacher's size, channels and stats."""
        from ..eval.features import to_model_input

        c = v.shape[1]
        mean = torch.tensor(self.data.mean, device=v.device).view(1, -1, 1, 1).expand(1, c, 1, 1)
        std = torch.tensor(self.data.std, device=v.device).view(1, -1, 1, 1).expand(1, c, 1, 1)
        t = self.teacher_info
        return to_model_input((v.float() * std + mean) * 255, t["mean"], t["std"], t["channels"], t["resolution"])

    def training_step(self, x, idx, gen, rng):
        v = self.augment(x, gen)
        with torch.no_grad():
            target = self.teacher(self.teacher_input(v))
        loss = regression_loss(self.head(self.backbone(v)), target)
        return loss, {}
