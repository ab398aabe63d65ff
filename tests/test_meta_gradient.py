"""Checks of mpdistil.meta: exactness, backend agreement, first-order approximation, side effects, Adam pilot."""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.func import functional_call
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
)

import mpdistil.meta as meta_module
from mpdistil.meta import AdamMoments, MetaGradientError, MetaStepConfig, meta_gradient

TEMPERATURE = 2.0
NUM_LABELS = 3
VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@dataclass
class Problem:
    """A student, a meta-teacher and the losses/batches of one pilot update."""

    student: nn.Module
    meta_teacher: nn.Module
    inner_batches: list[dict[str, torch.Tensor]]
    outer_batches: list[dict[str, torch.Tensor]]

    @property
    def metas(self) -> list[torch.Tensor]:
        return list(self.meta_teacher.parameters())

    def inner(self, forward: Callable[..., Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Soft cross-entropy towards the meta-teacher's tempered distribution (τ² scaled)."""
        logits = _logits(forward(**batch["inputs"]))
        soft = torch.softmax(self.meta_teacher(batch["features"]) / TEMPERATURE, dim=-1)
        return -(soft * torch.log_softmax(logits / TEMPERATURE, dim=-1)).sum(-1).mean() * TEMPERATURE**2

    def outer(self, forward: Callable[..., Any], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.cross_entropy(_logits(forward(**batch["inputs"])), batch["labels"])

    def run(self, moments: dict[str, AdamMoments] | None = None, **cfg: Any) -> tuple[list[torch.Tensor],
                                                                                      dict[str, float]]:
        return meta_gradient(
            self.student, self.metas, self.inner, self.outer, self.inner_batches, self.outer_batches,
            MetaStepConfig(**cfg), moments,
        )

    def reference_outer(self, steps: int, lr: float, moments: dict[str, AdamMoments] | None = None,
                        eps: float = 1e-8) -> float:
        """Quiz loss after k real SGD steps on a deep copy (independent of mpdistil.meta); with ``moments``,
        k steps of torch's Adam (no weight decay) continuing them."""
        student = copy.deepcopy(self.student)
        trainable = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trainable, lr=lr) if moments is None else torch.optim.Adam(trainable, lr=lr, eps=eps)
        for name, p in student.named_parameters():
            if moments is not None and name in moments:
                m = moments[name]
                opt.state[p] = {"step": torch.tensor(float(m.step)), "exp_avg": m.exp_avg.clone(),
                                "exp_avg_sq": m.exp_avg_sq.clone()}
        for t in range(steps):
            opt.zero_grad()
            self.inner(student, self.inner_batches[t % len(self.inner_batches)]).backward()
            opt.step()
        with torch.no_grad():
            return sum(float(self.outer(student, b)) for b in self.outer_batches) / len(self.outer_batches)


class TinyMLP(nn.Module):
    def __init__(self, d_in: int = 6, hidden: int = 8, batch_norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.BatchNorm1d(hidden) if batch_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, NUM_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


class _SquareOnce(torch.autograd.Function):
    """x² whose backward cannot itself be differentiated."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class OnceDifferentiableMLP(TinyMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(_SquareOnce.apply(self.fc1(x)))


def tiny_bert(attn: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=NUM_LABELS, attn_implementation=attn,
    )
    return BertForSequenceClassification(config).double().eval()


def tiny_deberta(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=NUM_LABELS, relative_attention=True, pos_att_type=["c2p", "p2c"],
        position_buckets=8, max_relative_positions=16, pooler_hidden_size=16, type_vocab_size=0,
    )
    return DebertaV2ForSequenceClassification(config).double().eval()


def text_problem(student: nn.Module, seed: int = 1, n_inner: int = 2, n_outer: int = 1) -> Problem:
    gen = torch.Generator().manual_seed(seed)

    def inputs() -> dict[str, torch.Tensor]:
        ids = torch.randint(0, VOCAB, (4, 10), generator=gen)
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[0, 7:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    hidden = student.config.hidden_size
    torch.manual_seed(seed)
    meta_teacher = nn.Linear(hidden, NUM_LABELS).double()
    inner = [{"inputs": inputs(), "features": 2 * torch.randn(4, hidden, generator=gen, dtype=torch.float64)}
             for _ in range(n_inner)]
    outer = [{"inputs": inputs(), "labels": torch.randint(0, NUM_LABELS, (4,), generator=gen)} for _ in range(n_outer)]
    return Problem(student, meta_teacher, inner, outer)


def mlp_problem(seed: int = 0, student: nn.Module | None = None, n_inner: int = 2, n_outer: int = 2) -> Problem:
    torch.manual_seed(seed)
    student = (student or TinyMLP()).double()
    meta_teacher = nn.Linear(8, NUM_LABELS).double()
    gen = torch.Generator().manual_seed(seed + 100)
    inner = [{"inputs": {"x": torch.randn(5, 6, generator=gen, dtype=torch.float64)},
              "features": 2 * torch.randn(5, 8, generator=gen, dtype=torch.float64)} for _ in range(n_inner)]
    outer = [{"inputs": {"x": torch.randn(5, 6, generator=gen, dtype=torch.float64)},
              "labels": torch.randint(0, NUM_LABELS, (5,), generator=gen)} for _ in range(n_outer)]
    return Problem(student, meta_teacher, inner, outer)


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# 1. Backends agree -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("make", "steps"), [(tiny_bert, 1), (tiny_bert, 2), (tiny_deberta, 1)], ids=["bert-k1", "bert-k2", "deberta-k1"]
)
def test_backends_agree(make: Callable[[], nn.Module], steps: int) -> None:
    problem = text_problem(make())
    g_higher, s_higher = problem.run(lr=0.5, steps=steps, backend="higher")
    g_func, s_func = problem.run(lr=0.5, steps=steps, backend="func")
    assert flat(g_func).norm() > 1e-3, "meta-gradient is trivially small: the comparison would be vacuous"
    assert (flat(g_higher) - flat(g_func)).abs().max() <= 1e-6
    assert s_higher["outer_loss"] == pytest.approx(s_func["outer_loss"], abs=1e-12)
    assert len([k for k in s_func if k.startswith("inner_loss_")]) == steps
    assert all(g.shape == p.shape and g.dtype == p.dtype for g, p in zip(g_func, problem.metas))


# 2. Exactness against finite differences of an independent SGD unroll ------------------------

def _check_against_fd(problem: Problem, grads: list[torch.Tensor], steps: int, lr: float, n_entries: int = 3,
                      moments: dict[str, AdamMoments] | None = None, eps: float = 1e-8) -> None:
    h = 1e-6
    checked = 0
    for param, grad in zip(problem.metas, grads):
        for idx in grad.reshape(-1).abs().argsort(descending=True)[:n_entries].tolist():
            entry = param.data.view(-1)
            original = float(entry[idx])
            entry[idx] = original + h
            plus = problem.reference_outer(steps, lr, moments, eps)
            entry[idx] = original - h
            minus = problem.reference_outer(steps, lr, moments, eps)
            entry[idx] = original
            fd = (plus - minus) / (2 * h)
            analytic = float(grad.reshape(-1)[idx])
            assert abs(fd) > 1e-4, "entry with a negligible gradient: comparison would be vacuous"
            assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-9), (param.shape, idx)
            checked += 1
    assert checked >= 2 * n_entries


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("steps", [1, 3])
def test_mlp_matches_finite_differences(backend: str, steps: int) -> None:
    problem = mlp_problem()
    grads, stats = problem.run(lr=0.7, steps=steps, backend=backend)
    assert stats["outer_loss"] == pytest.approx(problem.reference_outer(steps, 0.7), abs=1e-12)
    _check_against_fd(problem, grads, steps, 0.7)


def test_bert_matches_finite_differences() -> None:
    problem = text_problem(tiny_bert())
    grads, _ = problem.run(lr=0.5, steps=2, backend="func")
    _check_against_fd(problem, grads, 2, 0.5, n_entries=2)


# 3. Degenerate unrolls --------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize(("steps", "lr"), [(0, 0.5), (2, 0.0)], ids=["k0", "lr0"])
def test_zero_when_nothing_moves(backend: str, first_order: bool, steps: int, lr: float) -> None:
    problem = mlp_problem()
    grads, stats = problem.run(lr=lr, steps=steps, backend=backend, first_order=first_order)
    for g, p in zip(grads, problem.metas):
        assert torch.equal(g, torch.zeros_like(p))
    assert stats["outer_loss"] == pytest.approx(problem.reference_outer(0, 0.0), abs=1e-12)
    assert stats["meta_grad_norm"] == 0.0


# 4. First order -------------------------------------------------------------------------------

def _identity_jacobian_reference(problem: Problem, steps: int, lr: float) -> torch.Tensor:
    """−η Σ_t ∇_φ ⟨g, ∇_θ inner(θ_t; φ)⟩ with exact mixed derivatives: what first order approximates."""
    student = problem.student
    names, reals = zip(*student.named_parameters())
    theta = [p.detach().requires_grad_() for p in reals]

    def at(params: list[torch.Tensor]):
        """The student's forward at the weights ``params``."""
        return lambda **kw: functional_call(student, dict(zip(names, params)), (), kw)

    path = []
    for t in range(steps):
        path.append(theta)
        loss = problem.inner(at(theta), problem.inner_batches[t % len(problem.inner_batches)])
        grads = torch.autograd.grad(loss, theta)
        theta = [(p - lr * g).detach().requires_grad_() for p, g in zip(theta, grads)]
    outer = sum(problem.outer(at(theta), b) for b in problem.outer_batches) / len(problem.outer_batches)
    g_out = torch.autograd.grad(outer, theta)
    total = torch.zeros_like(flat(problem.metas))
    for t, point in enumerate(path):
        loss = problem.inner(at(point), problem.inner_batches[t % len(problem.inner_batches)])
        g_in = torch.autograd.grad(loss, point, create_graph=True)
        dot = sum((a * b).sum() for a, b in zip(g_in, g_out))
        total -= lr * flat(list(torch.autograd.grad(dot, problem.metas)))
    return total


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_first_order_k1_close_to_exact(backend: str) -> None:
    for problem in (text_problem(tiny_bert()), mlp_problem()):
        exact, _ = problem.run(lr=0.5, steps=1, backend=backend)
        approx, stats = problem.run(lr=0.5, steps=1, backend=backend, first_order=True)
        assert rel_err(flat(approx), flat(exact)) < 1e-2
        assert stats["fd_epsilon_abs"] > 0


def test_first_order_k2_drops_hessian_terms() -> None:
    problem = mlp_problem(seed=3)
    lr = 1.5  # large step: (I − η H) is far from I, so the dropped terms are large
    exact, _ = problem.run(lr=lr, steps=2, backend="func")
    approx, _ = problem.run(lr=lr, steps=2, backend="func", first_order=True)
    reference = _identity_jacobian_reference(problem, 2, lr)
    # It approximates the identity-Jacobian quantity (finite differences, O(ε²))...
    assert rel_err(flat(approx), reference) < 1e-3
    # ...which differs from the exact second-order meta-gradient by well over 10 %.
    assert rel_err(flat(approx), flat(exact)) > 0.1


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_first_order_never_builds_second_order_graph(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real_grad = torch.autograd.grad

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(bool(kwargs.get("create_graph", False)) or (len(args) > 4 and bool(args[4])))
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    problem = text_problem(tiny_bert())
    grads, _ = problem.run(lr=0.5, steps=2, backend=backend, first_order=True)
    assert len(calls) >= 3 and not any(calls)
    assert flat(grads).norm() > 0 and not any(g.requires_grad for g in grads)

    calls.clear()
    problem.run(lr=0.5, steps=2, backend=backend)
    assert any(calls), "the spy does not see the create_graph=True calls of the second-order path"


def test_first_order_replays_dropout_masks() -> None:
    problem = text_problem(tiny_bert())
    problem.student.train()
    torch.manual_seed(7)
    exact, _ = problem.run(lr=0.5, steps=1, backend="func")
    torch.manual_seed(7)
    approx, _ = problem.run(lr=0.5, steps=1, backend="func", first_order=True)
    assert problem.student.training
    assert rel_err(flat(approx), flat(exact)) < 1e-2


# 5. No side effects ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize("first_order", [False, True])
def test_student_and_meta_params_untouched(backend: str, first_order: bool) -> None:
    bert = text_problem(tiny_bert())
    bn = mlp_problem(student=TinyMLP(batch_norm=True))
    bn.student.train()
    for problem in (bert, bn):
        params = list(problem.student.parameters())
        for i, p in enumerate(params):
            p.grad = torch.randn_like(p) if i % 2 == 0 else None
        before = {n: t.detach().clone() for n, t in problem.student.state_dict().items()}
        grads_before = [None if p.grad is None else p.grad.clone() for p in params]
        mode = problem.student.training

        grads, _ = problem.run(lr=0.5, steps=2, backend=backend, first_order=first_order)

        assert flat(grads).norm() > 0
        for name, value in problem.student.state_dict().items():
            assert torch.equal(value, before[name]), name
        for p, g in zip(params, grads_before):
            assert (p.grad is None) if g is None else torch.equal(p.grad, g)
            assert p.requires_grad
        assert all(p.grad is None for p in problem.metas)
        assert problem.student.training == mode
    assert "norm.running_mean" in before and int(before["norm.num_batches_tracked"]) == 0


# 6. Attention kernels and impossible double backward ------------------------------------------

def _sdpa_double_backward_fails() -> bool:
    model = tiny_bert("sdpa")
    problem = text_problem(model)
    loss = problem.inner(model, problem.inner_batches[0])
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True, allow_unused=True)
    try:
        torch.autograd.grad(sum((g * g).sum() for g in grads if g is not None), problem.metas)
    except RuntimeError:
        return True
    return False


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_sdpa_model_second_order(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sdpa, eager = tiny_bert("sdpa"), tiny_bert("eager")
    assert sdpa.config._attn_implementation == "sdpa"
    sdpa_grads, _ = text_problem(sdpa).run(lr=0.5, steps=1, backend=backend)
    eager_grads, _ = text_problem(eager).run(lr=0.5, steps=1, backend=backend)
    assert (flat(sdpa_grads) - flat(eager_grads)).abs().max() <= 1e-8

    # Without the MATH kernel forced, the default kernel runs: if it has no double backward (torch 2.13 on CPU),
    # the meta-gradient stops with the one-line error; if this torch has one, the run agrees with eager attention.
    monkeypatch.setattr(meta_module, "sdpa_kernel", lambda *a, **k: contextlib.nullcontext())
    if _sdpa_double_backward_fails():
        with pytest.raises(MetaGradientError, match='attn_implementation="eager"'):
            text_problem(tiny_bert("sdpa")).run(lr=0.5, steps=1, backend=backend)
    else:
        default_grads, _ = text_problem(tiny_bert("sdpa")).run(lr=0.5, steps=1, backend=backend)
        assert (flat(default_grads) - flat(eager_grads)).abs().max() <= 1e-8


@pytest.mark.parametrize("backend", ["higher", "func"])
def test_no_double_backward_raises_clear_error(backend: str) -> None:
    problem = mlp_problem(student=OnceDifferentiableMLP())
    with pytest.raises(MetaGradientError) as info:
        problem.run(lr=0.5, steps=1, backend=backend)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "\n" not in message
    assert 'attn_implementation="eager"' in message and "method.first_order=true" in message
    grads, _ = problem.run(lr=0.5, steps=1, backend=backend, first_order=True)
    assert torch.isfinite(flat(grads)).all() and flat(grads).norm() > 0


def test_frozen_student_parameters_are_not_stepped() -> None:
    problem = mlp_problem()
    problem.student.fc1.requires_grad_(False)
    g_higher, _ = problem.run(lr=0.7, steps=2, backend="higher")
    g_func, _ = problem.run(lr=0.7, steps=2, backend="func")
    assert (flat(g_higher) - flat(g_func)).abs().max() <= 1e-10
    _check_against_fd(problem, g_func, 2, 0.7, n_entries=2)
    assert not problem.student.fc1.weight.requires_grad


# 7. Adam pilot ----------------------------------------------------------------------------------

def real_moments(problem: Problem, steps: int = 20, lr: float = 1e-2) -> dict[str, AdamMoments]:
    """The state of a real Adam run on the inner loss over a copy of the student: what a pilot continues."""
    student = copy.deepcopy(problem.student)
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for t in range(steps):
        opt.zero_grad()
        problem.inner(student, problem.inner_batches[t % len(problem.inner_batches)]).backward()
        opt.step()
    names = {p: n for n, p in student.named_parameters()}
    return {names[p]: AdamMoments(int(s["step"]), s["exp_avg"], s["exp_avg_sq"]) for p, s in opt.state.items()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("moments", [False, True], ids=["fresh", "moments"])
def test_adam_backends_agree(steps: int, moments: bool) -> None:
    problem = text_problem(tiny_bert(), n_outer=2)
    state = real_moments(problem) if moments else None
    g_higher, s_higher = problem.run(state, lr=1e-3, steps=steps, backend="higher", optimizer="adam")
    g_func, s_func = problem.run(state, lr=1e-3, steps=steps, backend="func", optimizer="adam")
    g_sgd, _ = problem.run(lr=1e-3, steps=steps, backend="func")
    assert flat(g_func).norm() > 1e-5 and rel_err(flat(g_func), flat(g_sgd)) > 0.1, "Adam would not be tested"
    assert (flat(g_higher) - flat(g_func)).abs().max() <= 1e-12 * flat(g_func).abs().max()
    assert s_higher["outer_loss"] == pytest.approx(s_func["outer_loss"], abs=1e-12)


@pytest.mark.parametrize("backend", ["higher", "func"])
@pytest.mark.parametrize(("steps", "eps"), [(1, 1e-8), (3, 1e-8), (2, 1e-3)])
def test_adam_matches_finite_differences_of_torch_adam(backend: str, steps: int, eps: float) -> None:
    """The pilot's Adam is torch's, continuing the given moments; a large ε checks that it enters after the bias
    correction, as in torch (higher's own formula adds it before)."""
    problem = mlp_problem()
    state = real_moments(problem, steps=5)
    grads, stats = problem.run(state, lr=0.05, steps=steps, backend=backend, optimizer="adam", eps=eps)
    assert stats["outer_loss"] == pytest.approx(problem.reference_outer(steps, 0.05, state, eps), abs=1e-12)
    _check_against_fd(problem, grads, steps, 0.05, moments=state, eps=eps)


def test_adam_moments_are_only_read() -> None:
    problem = text_problem(tiny_bert())
    state = real_moments(problem, steps=3)
    before = {n: (m.step, m.exp_avg.clone(), m.exp_avg_sq.clone()) for n, m in state.items()}
    for backend in ("higher", "func"):
        problem.run(state, lr=1e-3, steps=2, backend=backend, optimizer="adam")
    for name, (step, avg, avg_sq) in before.items():
        assert state[name].step == step
        assert torch.equal(state[name].exp_avg, avg) and torch.equal(state[name].exp_avg_sq, avg_sq)


@pytest.mark.parametrize("make", [mlp_problem, lambda: text_problem(tiny_bert(), n_outer=2)], ids=["mlp", "bert"])
def test_adam_meta_gradient_needs_the_real_moments(make: Callable[[], Problem]) -> None:
    """A fresh first Adam step is ≈ η·sign(g): its meta-gradient carries no signal of its own and is set by ε
    (the coordinates with |g| ≲ ε/√(1−β₂)). Continuing real moments, the step is ≈ a preconditioned SGD step:
    at the same step size its meta-gradient is of SGD's order, points like it and does not depend on ε."""
    problem = make()
    state = real_moments(problem)
    lr = 1e-3
    sgd = flat(problem.run(lr=lr, steps=1, backend="func")[0])

    def adam(moments: dict[str, AdamMoments] | None, eps: float) -> torch.Tensor:
        return flat(problem.run(moments, lr=lr, steps=1, backend="func", optimizer="adam", eps=eps)[0])

    real, real_eps = adam(state, 1e-8), adam(state, 1e-6)
    assert 0.2 < float(real.norm() / sgd.norm()) < 5
    assert float(real @ sgd / (real.norm() * sgd.norm())) > 0.9
    assert rel_err(real_eps, real) < 0.01
    fresh, fresh_eps = adam(None, 1e-8), adam(None, 1e-6)
    assert float(fresh_eps.norm() / fresh.norm()) > 10  # a hundredfold ε: a meta-gradient tens of times larger
    assert float(fresh @ sgd / (fresh.norm() * sgd.norm())) < 0.8


def test_adam_refuses_first_order_and_stray_moments() -> None:
    problem = mlp_problem()
    with pytest.raises(ValueError, match="first_order=True supports only optimizer='sgd'"):
        problem.run(lr=0.1, steps=1, first_order=True, optimizer="adam")
    with pytest.raises(ValueError, match="moments are read only by optimizer='adam'"):
        problem.run(real_moments(problem, steps=1), lr=0.1, steps=1)

