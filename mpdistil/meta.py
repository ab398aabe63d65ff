"""Meta-gradient of a quiz loss through k differentiable inner SGD or Adam steps of a student.

This is the MetaDistil "pilot update" (docs/method.md, phase 3): the student
takes k SGD (or Adam) steps on an inner loss shaped by meta-parameters φ (a teacher or meta-teacher),
the stepped student is scored on quiz batches, and the quiz loss is differentiated back into φ.
The student itself is never modified; the caller applies the returned gradient to φ.
"""
from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["AdamMoments", "MetaGradientError", "MetaStepConfig", "meta_gradient"]

Forward = Callable[..., Any]
LossFn = Callable[[Forward, Any], torch.Tensor]
ParamList = list[torch.Tensor]

_BACKENDS = ("higher", "func")
_OPTIMIZERS = ("sgd", "adam")
# Autograd errors raised when an op has no double backward (e.g. the fused SDPA kernels).
_NO_DOUBLE_BACKWARD = re.compile(r"derivative for .* is not implemented|differentiate twice")


class MetaGradientError(RuntimeError):
    """The second-order meta-gradient cannot be built for this student (an op lacks a double backward)."""


@dataclass
class MetaStepConfig:
    """How the pilot update is unrolled and differentiated.

    ``optimizer="adam"`` makes each inner step an Adam step (no weight decay) with ``betas`` and ``eps``;
    ``lr`` is then Adam's step size.
    """

    lr: float = 1e-2
    steps: int = 1
    first_order: bool = False
    backend: str = "higher"
    fd_epsilon: float = 1e-2
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class AdamMoments:
    """Adam's running state of one parameter: the Adam pilot continues it, as the real optimizer would.

    Without it a pilot step is a fresh first Adam step, ≈ lr·sign(g), whose meta-gradient is set by ε rather
    than by the loss (docs/method.md, "Why SGD is the default").
    """

    step: int
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor


def meta_gradient(
    student: torch.nn.Module,
    meta_params: Sequence[torch.Tensor],
    inner_loss: LossFn,
    outer_loss: LossFn,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
    moments: Optional[Mapping[str, AdamMoments]] = None,
) -> tuple[list[torch.Tensor], dict[str, float]]:
    """Gradient of the mean quiz loss after k inner SGD or Adam steps, with respect to ``meta_params``.

    The student takes ``cfg.steps`` SGD steps θ_{t+1} = θ_t − η ∇_θ inner_loss(θ_t; φ) on
    ``inner_batches`` (cycled), then ``outer_loss`` is averaged over ``outer_batches`` at θ_k and
    differentiated w.r.t. φ = ``meta_params``. Only the student's parameters with
    ``requires_grad`` are stepped. The loss callables receive ``forward`` (call it with the
    student's keyword inputs; it runs the student at the current functional weights and returns
    what the student returns) and one batch.

    With ``cfg.optimizer="adam"`` each step is instead a step of torch's Adam without weight decay,
    θ_{t+1} = θ_t − η/(1−β₁ˢ)·m_s/(√(v_s/(1−β₂ˢ)) + ε), continuing ``moments`` (by the student's parameter
    names; parameters without an entry start from zero moments at step 0). ``moments`` is only read, and
    only by Adam.

    Second order (``first_order=False``): exact, through the unrolled graph, with ``higher``'s
    differentiable SGD/Adam or a ``torch.func.functional_call`` unroll (``cfg.backend``). It runs under
    the MATH scaled-dot-product-attention kernel, the only SDPA kernel with a double backward.

    First order (``first_order=True``, for memory): no second-order graph is ever built. With
    g = ∇_θ outer(θ_k) and ε = fd_epsilon / ‖g‖, the mixed derivative is taken by central finite
    differences (as in DARTS):

        meta-gradient ≈ −η Σ_{t<k} [∇_φ inner(θ_t + ε g; φ) − ∇_φ inner(θ_t − ε g; φ)] / (2ε)

    where θ_t come from plain SGD steps and the Jacobians dθ_{t+1}/dθ_t are taken as the identity
    (the first-order MAML assumption). For k = 1 this approximates the exact meta-gradient up to
    O(ε²); for k ≥ 2 it drops the θ-Hessian terms (I − η H_t) and so differs from second order
    where those matter. The ± evaluations replay the RNG state of step t, so dropout masks match
    the step actually taken. It assumes a step linear in the gradient, so it supports SGD only.

    The student's parameters, buffers and ``.grad`` are left untouched, and so is the ``.grad``
    of ``meta_params``; the forwards run in the student's current train/eval mode. Returns the
    gradients (shapes and devices of ``meta_params``, zeros where unused) and stats:
    ``outer_loss``, ``inner_loss`` (mean) and ``inner_loss_<t>``, ``meta_grad_norm``, ``time_s``.
    """
    start = time.perf_counter()
    metas = list(meta_params)
    _check_args(student, metas, inner_batches, outer_batches, cfg, moments)
    moments = moments or {}

    if cfg.steps == 0 or cfg.lr == 0.0:
        grads, stats = _trivial(student, metas, inner_loss, outer_loss, inner_batches, outer_batches, cfg)
    elif cfg.first_order:
        grads, stats = _first_order(student, metas, inner_loss, outer_loss, inner_batches, outer_batches, cfg)
    else:
        try:
            with sdpa_kernel(SDPBackend.MATH):
                if cfg.backend == "higher":
                    grads, stats = _second_order_higher(
                        student, metas, inner_loss, outer_loss, inner_batches, outer_batches, cfg, moments
                    )
                else:
                    grads, stats = _second_order_func(
                        student, metas, inner_loss, outer_loss, inner_batches, outer_batches, cfg, moments
                    )
        except RuntimeError as err:
            if isinstance(err, MetaGradientError) or not _NO_DOUBLE_BACKWARD.search(str(err)):
                raise
            raise _no_double_backward(str(err).strip().splitlines()[0]) from err

    stats["meta_grad_norm"] = _global_norm(grads)
    stats["time_s"] = time.perf_counter() - start
    return grads, stats


def _no_double_backward(cause: str) -> MetaGradientError:
    """One-line error naming the cause and both fixes."""
    return MetaGradientError(
        f"second-order meta-gradient impossible: an op of the student has no double backward ({cause}); "
        f"load the model with attn_implementation=\"eager\" (attention kernels) or set method.first_order=true"
    )


def _check_graph_is_complete(stepped: Sequence[torch.Tensor]) -> None:
    """Refuse a silently truncated unroll.

    A backward marked ``@once_differentiable`` that runs with create_graph leaves an ``Error``
    node fed by a detached leaf. ``autograd.grad(..., inputs=meta_params)`` prunes that branch
    instead of raising, so the meta-gradient would quietly miss terms; we look for such nodes.
    """
    seen: set[Any] = set()
    stack = [t.grad_fn for t in stepped if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.name().endswith(("::Error", "::DelayedError")):
            raise _no_double_backward("a custom autograd.Function with a @once_differentiable backward")
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)


def _check_args(
    student: torch.nn.Module,
    metas: ParamList,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
    moments: Optional[Mapping[str, AdamMoments]],
) -> None:
    """Fail early with a readable message instead of deep inside autograd."""
    if cfg.backend not in _BACKENDS:
        raise ValueError(f"backend={cfg.backend!r} must be one of {_BACKENDS}")
    if cfg.optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer={cfg.optimizer!r} must be one of {_OPTIMIZERS}")
    if cfg.first_order and cfg.optimizer != "sgd":
        raise ValueError("first_order=True supports only optimizer='sgd' (its finite differences assume a step "
                         "linear in the gradient)")
    if moments and cfg.optimizer != "adam":
        raise ValueError(f"moments are read only by optimizer='adam', not {cfg.optimizer!r}")
    unknown = sorted(set(moments or {}) - {n for n, _ in student.named_parameters()})
    if unknown:
        raise ValueError(f"moments name parameters the student does not have: {unknown[:3]}")
    if cfg.steps < 0:
        raise ValueError(f"steps={cfg.steps} must be >= 0")
    if cfg.first_order and not cfg.fd_epsilon > 0:
        raise ValueError(f"fd_epsilon={cfg.fd_epsilon} must be > 0")
    if not metas:
        raise ValueError("meta_params is empty")
    frozen = [i for i, p in enumerate(metas) if not p.requires_grad]
    if frozen:
        raise ValueError(f"meta_params {frozen} do not require grad: no meta-gradient can reach them")
    if len(outer_batches) == 0:
        raise ValueError("outer_batches is empty: the quiz loss needs at least one batch")
    if cfg.steps > 0 and len(inner_batches) == 0:
        raise ValueError(f"steps={cfg.steps} but inner_batches is empty")
    if not any(p.requires_grad for p in student.parameters()):
        raise ValueError("the student has no parameter with requires_grad: nothing to step")


def _batch(batches: Sequence[Any], t: int) -> Any:
    """Batch of inner step t; the sequence is cycled when shorter than k."""
    return batches[t % len(batches)]


def _global_norm(tensors: Sequence[torch.Tensor]) -> float:
    """L2 norm over a list of tensors, as a Python float (no float64 copies of big tensors)."""
    return math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in tensors))


def _zeros(metas: ParamList) -> ParamList:
    return [torch.zeros_like(p) for p in metas]


def _to_list(grads: Sequence[Optional[torch.Tensor]], metas: ParamList) -> ParamList:
    """Replace the None of unused meta-parameters by zeros."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, metas)]


def _inner_stats(values: list[float]) -> dict[str, float]:
    stats = {f"inner_loss_{t}": v for t, v in enumerate(values)}
    stats["inner_loss"] = sum(values) / len(values) if values else float("nan")
    return stats


def _func_forward(student: torch.nn.Module, names: list[str], params: ParamList,
                  buffers: dict[str, torch.Tensor]) -> Forward:
    """The student as a function of ``params``; buffers are private copies so no state leaks back."""
    tensors = dict(zip(names, params))

    def forward(*args: Any, **kwargs: Any) -> Any:
        return functional_call(student, (tensors, buffers), args, kwargs, tie_weights=True, strict=False)

    return forward


def _buffer_copies(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in student.named_buffers()}


def _trivial(
    student: torch.nn.Module,
    metas: ParamList,
    inner_loss: LossFn,
    outer_loss: LossFn,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
) -> tuple[ParamList, dict[str, float]]:
    """k = 0 or η = 0: θ_k = θ_0 does not depend on φ, so the meta-gradient is exactly zero."""
    names, params = zip(*student.named_parameters())
    forward = _func_forward(student, list(names), [p.detach() for p in params], _buffer_copies(student))
    with torch.no_grad():
        inner = [float(inner_loss(forward, _batch(inner_batches, t))) for t in range(cfg.steps)]
        outer = sum(float(outer_loss(forward, b)) for b in outer_batches) / len(outer_batches)
    return _zeros(metas), {"outer_loss": outer, **_inner_stats(inner)}


def _outer_grad(
    outer_loss: LossFn,
    forward: Forward,
    outer_batches: Sequence[Any],
    targets: ParamList,
) -> tuple[list[Optional[torch.Tensor]], float]:
    """Gradient of the mean quiz loss, one batch at a time so only one quiz graph is alive."""
    total: list[Optional[torch.Tensor]] = [None] * len(targets)
    value = 0.0
    n = len(outer_batches)
    for j, batch in enumerate(outer_batches):
        loss = outer_loss(forward, batch) / n
        value += float(loss.detach())
        if not loss.requires_grad:
            continue
        grads = torch.autograd.grad(loss, targets, retain_graph=j < n - 1, allow_unused=True)
        total = [g if acc is None else (acc if g is None else acc + g) for acc, g in zip(total, grads)]
    return total, value


def _second_order_func(
    student: torch.nn.Module,
    metas: ParamList,
    inner_loss: LossFn,
    outer_loss: LossFn,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
    moments: Mapping[str, AdamMoments],
) -> tuple[ParamList, dict[str, float]]:
    """Manual differentiable SGD (θ ← θ − η ∇_θ L) or Adam over ``functional_call``, with create_graph."""
    names, reals = zip(*student.named_parameters())
    buffers = _buffer_copies(student)
    trainable = [i for i, p in enumerate(reals) if p.requires_grad]
    theta: ParamList = [p.detach().requires_grad_(p.requires_grad) for p in reals]
    state = {i: moments.get(names[i]) or AdamMoments(0, torch.zeros_like(reals[i]), torch.zeros_like(reals[i]))
             for i in trainable} if cfg.optimizer == "adam" else {}
    inner_values: list[float] = []
    for t in range(cfg.steps):
        loss = inner_loss(_func_forward(student, list(names), theta, buffers), _batch(inner_batches, t))
        inner_values.append(float(loss.detach()))
        if not loss.requires_grad:
            raise ValueError("inner_loss does not depend on the student's trainable parameters")
        grads = torch.autograd.grad(loss, [theta[i] for i in trainable], create_graph=True, allow_unused=True)
        theta = list(theta)
        for i, g in zip(trainable, grads):
            if g is None:
                continue
            if cfg.optimizer == "adam":
                theta[i], state[i] = _adam_step(theta[i], g, state[i], cfg)
            else:
                theta[i] = torch.add(theta[i], g, alpha=-cfg.lr)
    _check_graph_is_complete([theta[i] for i in trainable])
    forward = _func_forward(student, list(names), theta, buffers)
    grads_meta, outer_value = _outer_grad(outer_loss, forward, outer_batches, metas)
    return _to_list(grads_meta, metas), {"outer_loss": outer_value, **_inner_stats(inner_values)}


def _second_order_higher(
    student: torch.nn.Module,
    metas: ParamList,
    inner_loss: LossFn,
    outer_loss: LossFn,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
    moments: Mapping[str, AdamMoments],
) -> tuple[ParamList, dict[str, float]]:
    """The same unroll with ``higher``'s differentiable SGD or Adam (kept as the MetaDistil reference)."""
    import higher

    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    adam_steps: list[int] = []  # the starting Adam step of each parameter group
    if cfg.optimizer == "adam":
        # higher's DifferentiableAdam state: by parameter, an int step keeps the bias corrections in Python floats
        state = {p: {"step": int(moments[n].step), "exp_avg": moments[n].exp_avg, "exp_avg_sq": moments[n].exp_avg_sq}
                 for n, p in trainable if n in moments}
        by_step: dict[int, list[torch.Tensor]] = {}
        for _, p in trainable:
            by_step.setdefault(state[p]["step"] if p in state else 0, []).append(p)
        adam_steps = list(by_step)
        pilot: torch.optim.Optimizer = torch.optim.Adam([{"params": ps} for ps in by_step.values()], lr=cfg.lr,
                                                        betas=cfg.betas, eps=cfg.eps, weight_decay=0.0)
        pilot.state.update(state)  # higher copies it
    else:
        pilot = torch.optim.SGD([p for _, p in trainable], lr=cfg.lr)
    inner_values: list[float] = []
    with higher.innerloop_ctx(student, pilot, copy_initial_weights=True, track_higher_grads=True) as (fmodel, diffopt):
        _share_forward_hooks(student, fmodel)
        for t in range(cfg.steps):
            loss = inner_loss(fmodel, _batch(inner_batches, t))
            inner_values.append(float(loss.detach()))
            if not loss.requires_grad:
                raise ValueError("inner_loss does not depend on the student's trainable parameters")
            # higher adds ε to √v before the bias correction, torch's Adam after it: ε·√(1−β₂ˢ) makes them equal
            override = {"eps": [_higher_eps(cfg, s + t + 1) for s in adam_steps]} if adam_steps else None
            diffopt.step(loss, override=override)
        _check_graph_is_complete(list(fmodel.parameters()))
        grads_meta, outer_value = _outer_grad(outer_loss, fmodel, outer_batches, metas)
    return _to_list(grads_meta, metas), {"outer_loss": outer_value, **_inner_stats(inner_values)}


def _higher_eps(cfg: MetaStepConfig, step: int) -> float:
    """The ε of higher's Adam formula, θ − η·√(1−β₂ˢ)/(1−β₁ˢ)·m/(√v + ε'), that gives torch's Adam at step s."""
    return cfg.eps * math.sqrt(1 - cfg.betas[1] ** step)


def _adam_step(p: torch.Tensor, g: torch.Tensor, state: AdamMoments,
               cfg: MetaStepConfig) -> tuple[torch.Tensor, AdamMoments]:
    """One differentiable step of torch's Adam (ε added to the bias-corrected √v̂), in the arithmetic of
    ``higher``'s DifferentiableAdam with its ε rescaled, so that both backends agree.

    Where v is exactly zero (a parameter that never had a gradient) √v has no finite derivative; like higher,
    no gradient flows through those entries.
    """
    beta1, beta2 = cfg.betas
    step = int(state.step) + 1
    exp_avg = (state.exp_avg * beta1) + (1 - beta1) * g
    exp_avg_sq = (state.exp_avg_sq * beta2) + (1 - beta2) * g * g
    root = torch.where(exp_avg_sq == 0, torch.zeros_like(exp_avg_sq), exp_avg_sq).sqrt()
    step_size = cfg.lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
    new = p + (-step_size) * (exp_avg / (root + _higher_eps(cfg, step)))
    return new, AdamMoments(step, exp_avg, exp_avg_sq)


def _share_forward_hooks(student: torch.nn.Module, fmodel: torch.nn.Module) -> None:
    """Make ``higher``'s patched copy record what the student records through forward hooks, as ``functional_call``
    does: transformers collects ``output_hidden_states`` (the PKD term's [CLS] states) by hooks on its layers.

    higher copies every module attribute except the hook dicts, and its patched classes are new classes, which
    transformers (≥ 5) does not find in its registry of what a model class can record; without this the hidden
    states would silently come back as None. Each patched module gets its own copy of the hook dicts, so hooks
    transformers installs on the copy never reach the student.
    """
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY as registry
    except ImportError:  # older transformers have no such registry
        registry = None
    patched_by_name = dict(fmodel.named_modules())
    for name, module in student.named_modules():
        patched = patched_by_name.get(name)
        if patched is None:
            continue
        patched.__dict__["_forward_hooks"] = OrderedDict(module._forward_hooks)
        patched.__dict__["_forward_pre_hooks"] = OrderedDict(module._forward_pre_hooks)
        if registry is not None and registry.get(module):
            registry[patched] = registry.get(module)


def _devices_of(params: ParamList) -> list[torch.device]:
    return sorted({p.device for p in params if p.device.type == "cuda"}, key=str)


def _rng_state(cuda_devices: list[torch.device]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda_devices]


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor]], cuda_devices: list[torch.device]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(cuda_devices, state[1]):
        torch.cuda.set_rng_state(s, d)


@contextmanager
def _replay_rng(state: tuple[torch.Tensor, list[torch.Tensor]], cuda_devices: list[torch.device]) -> Iterator[None]:
    """Run a block with a past RNG state and restore the present one afterwards."""
    now = _rng_state(cuda_devices)
    _set_rng_state(state, cuda_devices)
    try:
        yield
    finally:
        _set_rng_state(now, cuda_devices)


def _first_order(
    student: torch.nn.Module,
    metas: ParamList,
    inner_loss: LossFn,
    outer_loss: LossFn,
    inner_batches: Sequence[Any],
    outer_batches: Sequence[Any],
    cfg: MetaStepConfig,
) -> tuple[ParamList, dict[str, float]]:
    """Plain SGD unroll plus a finite-difference mixed derivative: no graph of a graph anywhere."""
    names, reals = zip(*student.named_parameters())
    reals = list(reals)
    trainable = [i for i, p in enumerate(reals) if p.requires_grad]
    make_forward = _first_order_forward_factory(student, list(names), reals, cfg.backend)
    cuda_devices = _devices_of(reals)

    theta: ParamList = [p.detach().requires_grad_(p.requires_grad) for p in reals]
    trajectory: list[ParamList] = []
    rng_states = []
    inner_values: list[float] = []
    for t in range(cfg.steps):
        trajectory.append(theta)
        rng_states.append(_rng_state(cuda_devices))
        loss = inner_loss(make_forward(theta), _batch(inner_batches, t))
        inner_values.append(float(loss.detach()))
        if not loss.requires_grad:
            raise ValueError("inner_loss does not depend on the student's trainable parameters")
        grads = torch.autograd.grad(loss, [theta[i] for i in trainable], allow_unused=True)
        theta = list(theta)
        with torch.no_grad():
            for i, g in zip(trainable, grads):
                if g is not None:
                    theta[i] = torch.add(theta[i], g, alpha=-cfg.lr).requires_grad_()
        del grads, loss

    g_theta, outer_value = _outer_grad(outer_loss, make_forward(theta), outer_batches, [theta[i] for i in trainable])
    stats = {"outer_loss": outer_value, **_inner_stats(inner_values)}
    direction = [torch.zeros_like(theta[i]) if g is None else g for i, g in zip(trainable, g_theta)]
    norm = _global_norm(direction)
    if norm == 0.0 or not math.isfinite(norm):
        return _zeros(metas), stats
    eps = cfg.fd_epsilon / norm
    stats["fd_epsilon_abs"] = eps

    total: list[Optional[torch.Tensor]] = [None] * len(metas)
    for t, (point, state) in enumerate(zip(trajectory, rng_states)):
        batch = _batch(inner_batches, t)
        losses = []
        for sign in (1.0, -1.0):
            shifted = [p.detach() for p in point]
            with torch.no_grad():
                for i, d in zip(trainable, direction):
                    shifted[i] = torch.add(shifted[i], d, alpha=sign * eps)
            with _replay_rng(state, cuda_devices):
                losses.append(inner_loss(make_forward(shifted), batch))
        diff = losses[0] - losses[1]
        if not diff.requires_grad:
            continue
        grads = torch.autograd.grad(diff, metas, allow_unused=True)
        scale = -cfg.lr / (2.0 * eps)
        total = [
            acc if g is None else (g * scale if acc is None else acc + g * scale) for acc, g in zip(total, grads)
        ]
    return _to_list(total, metas), stats


def _first_order_forward_factory(
    student: torch.nn.Module, names: list[str], reals: ParamList, backend: str
) -> Callable[[ParamList], Forward]:
    """Map a parameter list (order of ``student.named_parameters()``) to a forward, per backend."""
    if backend == "func":
        buffers = _buffer_copies(student)
        return lambda params: _func_forward(student, names, params, buffers)

    import higher

    fmodel = higher.monkeypatch(student, copy_initial_weights=True, track_higher_grads=False)
    _share_forward_hooks(student, fmodel)
    base = [p.detach() for p in reals]
    fmodel.update_params(base)  # drop higher's private copy of every weight

    def make(params: ParamList) -> Forward:
        def forward(*args: Any, **kwargs: Any) -> Any:
            try:
                return fmodel(*args, params=params, **kwargs)
            finally:
                fmodel.fast_params = base  # do not keep a shifted copy of the weights alive

        return forward

    return make
