"""The meta-teacher T': a small trainable network that labels pooled representations.

``head``: the teacher's own classifier head over the frozen teacher encoder (the authors'
choice); ``mlp``: a fresh two-layer network. Student representations of a different width are
mapped to the teacher's width by a learned projection.

A copied RoBERTa-style head (dense, activation, out_proj) keeps its layers but not its dropouts:
T' is a deterministic map of pooled vectors whichever head it copies, as the copy of a BERT-style
linear head is (the agent's dropout before that head is not part of it), and so its logits do not
depend on the mode it was left in.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn


class MetaTeacher(nn.Module):
    def __init__(self, form: str, teacher_dim: int, student_dim: int, num_outputs: int,
                 teacher_head: Optional[nn.Module] = None, hidden: int = 256, regression: bool = False) -> None:
        super().__init__()
        if form == "head":
            if teacher_head is None:
                raise ValueError("meta_teacher=head needs the teacher's classifier head")
            # in fp32 whatever the frozen teacher's dtype (model.teacher_dtype): T' is trained
            self.body: nn.Module = copy.deepcopy(teacher_head).float()
            for module in self.body.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        else:
            self.body = nn.Sequential(nn.Linear(teacher_dim, hidden), nn.GELU(), nn.Linear(hidden, num_outputs))
        self.student_proj: nn.Module = nn.Identity() if student_dim == teacher_dim else nn.Linear(student_dim,
                                                                                                 teacher_dim)
        self.form = form
        self.regression = regression
        self.trained = False  # until phase 3 has run, soft targets come from the teacher itself

    def forward(self, h: torch.Tensor, source: str = "teacher", choices: int = 0) -> torch.Tensor:
        """Logits for pooled vectors [N(*choices), H] of the teacher or the student (see ``Agent`` for "pooled")."""
        x = self.student_proj(h) if source == "student" else h
        logits = self.body(x.to(next(self.body.parameters()).dtype))
        if choices:
            return logits.view(-1, choices)
        return logits.squeeze(-1) if self.regression else logits
