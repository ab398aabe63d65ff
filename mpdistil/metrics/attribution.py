"""Token attributions for classifiers, and how similar a student's are to its teacher's.

The paradox paper (Ramesh et al., 2025) measures fidelity of generative students as the
BLEU between teacher and student rationales. Classifiers produce no rationale, so this
module is our extension of that idea to classifiers, not the paper's definition: a
model's "rationale" for a decision is its per-token attribution (integrated gradients,
or gradient x input as the cheap option), and fidelity is the rank correlation or top-k
overlap between the teacher's and the student's attributions on the same tokens
(when teacher and student share a tokenizer, positions align). With different tokenizers
the same text is cut into different tokens, so each model's token attributions are summed
over the words of the text and the two are compared word by word
(:func:`mean_word_attribution_similarity`).

Works on any HuggingFace-style model that exposes ``get_input_embeddings()``, accepts
``inputs_embeds``, ``attention_mask`` and optional ``token_type_ids``, and returns an
object with ``.logits`` (e.g. ``BertForSequenceClassification``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mpdistil.metrics.fidelity import _spearman

__all__ = ["attributions", "attribution_similarity", "mean_attribution_similarity", "mean_word_attribution_similarity",
           "word_sums"]

_METHODS = ("ig", "gxi")
_BASELINES = ("pad", "zero")
_RULES = ("trapezoid", "midpoint")


def _device(model: nn.Module) -> torch.device:
    """The device of the model's input embeddings, where every tensor must live."""
    return model.get_input_embeddings().weight.device


def _logits(
    model: nn.Module,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """Forward from word embeddings to [n, C] logits."""
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out
    return logits.reshape(logits.shape[0], -1)


def _select(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of each row's target logit: its gradient is the per-row gradient."""
    return logits.gather(1, target.reshape(-1, 1)).sum()


def _ig_nodes(steps: int, rule: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation points and quadrature weights on [0, 1] for the path integral."""
    if rule == "trapezoid":
        if steps < 2:
            raise ValueError("the trapezoid rule needs steps >= 2")
        alphas = torch.linspace(0.0, 1.0, steps, dtype=dtype, device=device)
        weights = torch.full((steps,), 1.0 / (steps - 1), dtype=dtype, device=device)
        weights[0] = weights[-1] = 0.5 / (steps - 1)
    elif rule == "midpoint":
        if steps < 1:
            raise ValueError("the midpoint rule needs steps >= 1")
        alphas = (torch.arange(steps, dtype=dtype, device=device) + 0.5) / steps
        weights = torch.full((steps,), 1.0 / steps, dtype=dtype, device=device)
    else:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    return alphas, weights


class _EvalMode:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    ``model.train(was_training)`` would be wrong for models whose parts are in mixed
    modes (e.g. a frozen encoder kept in eval inside a training wrapper).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        for module, mode in self.modes:
            module.training = mode


def _resolve_target(logits: torch.Tensor, target: Any | None) -> torch.Tensor:
    """Index of the explained output: 0 for a single-output regressor, else the given
    class or the model's own argmax."""
    if logits.shape[1] == 1:
        return torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    if target is None:
        return logits.argmax(dim=1)
    return torch.as_tensor(target, device=logits.device).long().reshape(-1)


def _default_target(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> torch.Tensor:
    """The model's own prediction in eval mode, on the model's device."""
    device = _device(model)
    with _EvalMode(model), torch.no_grad():
        x = model.get_input_embeddings()(input_ids.to(device))
        tt = None if token_type_ids is None else token_type_ids.to(device)
        logits = _logits(model, x, attention_mask.to(device), tt)
    return _resolve_target(logits, None)


@torch.enable_grad()
def attributions(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    method: str = "ig",
    steps: int = 16,
    baseline: str = "pad",
    rule: str = "trapezoid",
    internal_batch_size: int = 256,
) -> torch.Tensor:
    """Per-token attribution [B, L] of the target logit, summed over the embedding dim.

    ``method="ig"``: integrated gradients along the straight line from the baseline
    word embeddings (``"pad"``: the pad token's embedding at every position; ``"zero"``)
    to the input's, with ``steps`` quadrature points (``rule`` trapezoid or midpoint),
    evaluated in batches of up to ``internal_batch_size`` rows. Completeness holds up to
    quadrature error: the row sum equals f(x) - f(baseline) for the target logit.
    ``method="gxi"``: gradient x input embedding at the input.

    ``target`` defaults to the model's own argmax; single-output models always use 0.
    Position, token-type and attention inputs are kept fixed along the path. Padding
    positions get 0. The model runs in eval mode and its modes are restored afterwards;
    gradients are taken w.r.t. the embeddings only, so no parameter ``.grad`` is set.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if baseline not in _BASELINES:
        raise ValueError(f"baseline must be one of {_BASELINES}, got {baseline!r}")
    device = _device(model)
    input_ids = input_ids.to(device)
    attention_mask = attention_mask.to(device)
    if token_type_ids is not None:
        token_type_ids = token_type_ids.to(device)
    emb_layer = model.get_input_embeddings()

    with _EvalMode(model):
        x = emb_layer(input_ids).detach()
        with torch.no_grad():
            logits0 = _logits(model, x, attention_mask, token_type_ids)
        target = _resolve_target(logits0, target)

        if method == "gxi":
            x_req = x.clone().requires_grad_(True)
            logits = _logits(model, x_req, attention_mask, token_type_ids)
            (grad,) = torch.autograd.grad(_select(logits, target), x_req)
            attr = (grad * x).sum(dim=-1)
        else:
            if baseline == "pad":
                pad_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0
                base = emb_layer(torch.full_like(input_ids, pad_id)).detach()
            else:
                base = torch.zeros_like(x)
            delta = x - base
            alphas, weights = _ig_nodes(steps, rule, x.dtype, device)
            bsz = x.shape[0]
            per_chunk = max(1, internal_batch_size // bsz)
            total_grad = torch.zeros_like(x)
            for start in range(0, steps, per_chunk):
                a = alphas[start:start + per_chunk]
                w = weights[start:start + per_chunk]
                k = a.shape[0]
                path = (base.unsqueeze(0) + a.view(k, 1, 1, 1) * delta.unsqueeze(0))
                path = path.reshape(k * bsz, *x.shape[1:]).requires_grad_(True)
                tt = None if token_type_ids is None else token_type_ids.repeat(k, 1)
                logits = _logits(model, path, attention_mask.repeat(k, 1), tt)
                (grad,) = torch.autograd.grad(_select(logits, target.repeat(k)), path)
                total_grad += (w.view(k, 1, 1, 1) * grad.view(k, *x.shape)).sum(dim=0)
            attr = (total_grad * delta).sum(dim=-1)

    return (attr * (attention_mask != 0).to(attr.dtype)).detach()


def _np1d(x: Any) -> np.ndarray:
    """1-D float64 numpy view of a tensor or array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def attribution_similarity(a: Any, b: Any, mask: Any, top_k: int = 5) -> dict[str, float]:
    """Similarity of two [L] attribution vectors over non-padding positions.

    ``spearman``: rank correlation of |a| and |b| (NaN if fewer than 2 positions or one
    side is constant, unless the two are identical, which counts as 1).
    ``topk_overlap``: |topk(|a|) ∩ topk(|b|)| / k with k = min(top_k, length).
    Magnitudes are compared because a token that strongly argues against the class is
    as much part of the "rationale" as one that argues for it.
    """
    keep = _np1d(mask) != 0
    abs_a = np.abs(_np1d(a)[keep])
    abs_b = np.abs(_np1d(b)[keep])
    n = abs_a.shape[0]
    if n == 0:
        return {"spearman": float("nan"), "topk_overlap": float("nan")}
    if np.array_equal(abs_a, abs_b):
        rho = 1.0
    else:
        rho = _spearman(abs_a, abs_b)
    k = max(1, min(int(top_k), n))
    top_a = set(np.argsort(-abs_a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-abs_b, kind="stable")[:k].tolist())
    return {"spearman": float(rho), "topk_overlap": len(top_a & top_b) / k}


def mean_attribution_similarity(
    model_a: nn.Module,
    model_b: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    method: str = "ig",
    steps: int = 16,
    top_k: int = 5,
    baseline: str = "pad",
    batch_size: int = 16,
) -> dict[str, Any]:
    """Average attribution similarity of two models (teacher = ``model_a``) over examples.

    Both models explain the same class so that the comparison is between explanations
    of one decision: ``target`` defaults to ``model_a``'s prediction (pass gold labels to
    explain the true class instead). Returns ``attr_spearman`` (mean over examples with
    a defined rho, NaN if none), ``attr_topk_overlap``, ``attr_n`` (examples),
    ``attr_n_spearman`` (examples with a defined rho) and ``attr_spearman_per_example``
    (a list, for histograms; drop it before logging scalars).
    """
    n = int(input_ids.shape[0])
    rhos: list[float] = []
    overlaps: list[float] = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        ids, mask = input_ids[sl], attention_mask[sl]
        tt = None if token_type_ids is None else token_type_ids[sl]
        if target is None:
            tgt = _default_target(model_a, ids, mask, tt)
        else:
            tgt = torch.as_tensor(target)[sl]
        common = dict(target=tgt, method=method, steps=steps, baseline=baseline)
        attr_a = attributions(model_a, ids, mask, tt, **common).cpu()
        attr_b = attributions(model_b, ids, mask, tt, **common).cpu()
        mask_cpu = mask.cpu()
        for i in range(attr_a.shape[0]):
            sim = attribution_similarity(attr_a[i], attr_b[i], mask_cpu[i], top_k=top_k)
            rhos.append(sim["spearman"])
            overlaps.append(sim["topk_overlap"])
    return _summary(rhos, overlaps, n)


def _summary(rhos: list[float], overlaps: list[float], n: int) -> dict[str, Any]:
    finite = [r for r in rhos if np.isfinite(r)]
    finite_overlaps = [o for o in overlaps if np.isfinite(o)]
    return {
        "attr_spearman": float(np.mean(finite)) if finite else float("nan"),
        "attr_topk_overlap": float(np.mean(finite_overlaps)) if finite_overlaps else float("nan"),
        "attr_n": n,
        "attr_n_spearman": len(finite),
        "attr_spearman_per_example": rhos,
    }


def word_sums(attr: torch.Tensor, words: torch.Tensor, n_words: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token attributions [L] summed per word (``words`` [L]: each token's word, -1 for none) into [n_words], and
    which words have at least one token (a word cut off by truncation has none)."""
    keep = words >= 0
    index = words[keep].long()
    sums = torch.zeros(n_words, dtype=attr.dtype).index_add_(0, index, attr[keep])
    present = torch.zeros(n_words, dtype=torch.bool)
    present[index] = True
    return sums, present


def mean_word_attribution_similarity(
    model_a: nn.Module,
    inputs_a: dict[str, torch.Tensor],
    words_a: torch.Tensor,
    model_b: nn.Module,
    inputs_b: dict[str, torch.Tensor],
    words_b: torch.Tensor,
    target: torch.Tensor | None = None,
    method: str = "ig",
    steps: int = 16,
    top_k: int = 5,
    baseline: str = "pad",
    batch_size: int = 16,
) -> dict[str, Any]:
    """:func:`mean_attribution_similarity` for two models that read the same examples through different
    tokenizers.

    ``inputs_a`` / ``inputs_b`` hold each model's encoding of the same examples in the same order (``input_ids``,
    ``attention_mask``, optionally ``token_type_ids``) and ``words_a`` / ``words_b`` [B, L] the word of the
    example's text each token lies in (-1 for special tokens and padding), numbered alike on both sides. Each
    model's token attributions are summed per word and the two are compared over the words both models saw.
    Both explain the same class: ``target`` defaults to ``model_a``'s prediction. Returns the same keys.
    """
    n = int(inputs_a["input_ids"].shape[0])
    rhos: list[float] = []
    overlaps: list[float] = []
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        part_a = {k: v[sl] for k, v in inputs_a.items()}
        part_b = {k: v[sl] for k, v in inputs_b.items()}
        if target is None:
            tgt = _default_target(model_a, part_a["input_ids"], part_a["attention_mask"], part_a.get("token_type_ids"))
        else:
            tgt = torch.as_tensor(target)[sl]
        common = dict(target=tgt, method=method, steps=steps, baseline=baseline)
        attr_a = attributions(model_a, part_a["input_ids"], part_a["attention_mask"], part_a.get("token_type_ids"),
                              **common).cpu()
        attr_b = attributions(model_b, part_b["input_ids"], part_b["attention_mask"], part_b.get("token_type_ids"),
                              **common).cpu()
        for i in range(attr_a.shape[0]):
            wa, wb = words_a[sl][i].cpu(), words_b[sl][i].cpu()
            n_words = int(max(wa.max(), wb.max())) + 1
            sum_a, seen_a = word_sums(attr_a[i], wa[: attr_a.shape[1]], n_words)
            sum_b, seen_b = word_sums(attr_b[i], wb[: attr_b.shape[1]], n_words)
            sim = attribution_similarity(sum_a, sum_b, seen_a & seen_b, top_k=top_k)
            rhos.append(sim["spearman"])
            overlaps.append(sim["topk_overlap"])
    return _summary(rhos, overlaps, n)
