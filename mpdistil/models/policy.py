"""The curriculum policy π(task | state) and the two state designs it can read."""
from __future__ import annotations

import torch
from torch import nn


def pooler_weight(student: nn.Module) -> torch.Tensor:
    """The student's pooler dense weight (the authors' state), else its main head's first weight.

    A RoBERTa-style head's ``dense`` [H, H] is that head's counterpart of BERT's pooler dense (both map the
    first token through dense + activation); a BERT-like encoder without a pooler gives its linear classifier's.
    """
    hf = student.hf
    for owner in (getattr(hf.base_model, "pooler", None), getattr(hf, "pooler", None)):
        dense = getattr(owner, "dense", None)
        if isinstance(dense, nn.Linear):
            return dense.weight
    return student.main_head_weight()


class Policy(nn.Module):
    """state → distribution over curriculum tasks.

    ``pooler``: the state is a learned linear map of the student's pooler weight matrix [H, H]
    to an H-vector (as in the authors' code), then an MLP. ``quiz_stats``: the state is a
    small vector of statistics of the student on each task's quiz data plus the last reward.
    """

    def __init__(self, state: str, n_tasks: int, state_dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.state = state
        self.project = nn.Linear(state_dim, 1) if state == "pooler" else nn.Identity()
        self.net = nn.Sequential(nn.Linear(state_dim, hidden), nn.Tanh(), nn.Linear(hidden, n_tasks))

    def forward(self, state: torch.Tensor) -> torch.distributions.Categorical:
        x = self.project(state).squeeze(-1) if self.state == "pooler" else state
        return torch.distributions.Categorical(logits=self.net(x.float()))
