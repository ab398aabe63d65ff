"""Token attributions on a tiny BERT classifier."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from mpdistil.metrics.attribution import (
    attribution_similarity,
    attributions,
    mean_attribution_similarity,
)


def _tiny_bert(seed: int = 0, num_labels: int = 3, init_range: float = 0.02) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=num_labels,
        initializer_range=init_range,
    )
    return BertForSequenceClassification(config).eval()


def _batch(seed: int = 0, bsz: int = 4, length: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (bsz, length), generator=g)
    mask = torch.ones(bsz, length, dtype=torch.long)
    mask[1, 7:] = 0
    mask[3, 5:] = 0
    ids[mask == 0] = 0
    tt = torch.zeros(bsz, length, dtype=torch.long)
    tt[:, length // 2:] = 1
    tt[mask == 0] = 0
    return ids, mask, tt


def _logits_from_embeds(model, embeds, mask, tt) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=tt).logits


@pytest.mark.parametrize("baseline", ["pad", "zero"])
def test_integrated_gradients_completeness(baseline: str) -> None:
    model = _tiny_bert(init_range=0.3).double()
    with torch.no_grad():
        model.get_input_embeddings().weight[0].normal_(0.0, 0.3)
    ids, mask, tt = _batch()
    with torch.no_grad():
        target = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits.argmin(dim=1)
    attr = attributions(model, ids, mask, tt, target=target, method="ig", steps=128, baseline=baseline)
    emb = model.get_input_embeddings()
    x = emb(ids).detach()
    base = emb(torch.zeros_like(ids)).detach() if baseline == "pad" else torch.zeros_like(x)
    f_x = _logits_from_embeds(model, x, mask, tt).gather(1, target[:, None]).squeeze(1)
    f_b = _logits_from_embeds(model, base, mask, tt).gather(1, target[:, None]).squeeze(1)
    diff = f_x - f_b
    assert attr.dtype == torch.float64
    assert attr.shape == ids.shape
    assert diff.abs().min() > 0.02
    assert torch.allclose(attr.sum(dim=1), diff, rtol=3e-3, atol=1e-6)
    assert torch.all(attr[mask == 0] == 0)


def test_midpoint_rule_also_complete_and_chunking_invariant() -> None:
    model = _tiny_bert(seed=1, init_range=0.3).double()
    ids, mask, tt = _batch(seed=1)
    a = attributions(model, ids, mask, tt, steps=64, rule="midpoint")
    b = attributions(model, ids, mask, tt, steps=64, rule="midpoint", internal_batch_size=40)
    assert torch.allclose(a, b, atol=1e-10)
    emb = model.get_input_embeddings()
    logits_x = _logits_from_embeds(model, emb(ids), mask, tt)
    target = logits_x.argmax(dim=1)
    f_b = _logits_from_embeds(model, emb(torch.zeros_like(ids)), mask, tt).gather(1, target[:, None]).squeeze(1)
    diff = logits_x.gather(1, target[:, None]).squeeze(1) - f_b
    assert torch.allclose(a.sum(dim=1), diff, rtol=3e-3, atol=1e-6)


def test_gradient_times_input_matches_manual_and_leaves_no_grads() -> None:
    model = _tiny_bert(seed=2)
    model.train()
    model.bert.encoder.eval()
    modes_before = {name: m.training for name, m in model.named_modules()}
    ids, mask, tt = _batch(seed=2)
    attr = attributions(model, ids, mask, tt, method="gxi")
    assert {name: m.training for name, m in model.named_modules()} == modes_before
    assert all(p.grad is None for p in model.parameters())

    model.eval()
    x = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=x, attention_mask=mask, token_type_ids=tt).logits
    target = logits.argmax(dim=1)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    manual = (grad * x).sum(-1).detach() * mask
    assert torch.allclose(attr, manual, atol=1e-6)


def test_regression_model_uses_output_zero_and_no_grad_context() -> None:
    model = _tiny_bert(seed=3, num_labels=1, init_range=0.3).double()
    ids, mask, tt = _batch(seed=3)
    with torch.no_grad():
        attr = attributions(model, ids, mask, tt, method="ig", steps=128, baseline="zero")
    emb = model.get_input_embeddings()
    x = emb(ids).detach()
    diff = (_logits_from_embeds(model, x, mask, tt) - _logits_from_embeds(model, torch.zeros_like(x), mask, tt))[:, 0]
    assert torch.allclose(attr.sum(dim=1), diff, rtol=3e-3, atol=1e-6)


def test_identical_models_have_similarity_one() -> None:
    teacher = _tiny_bert(seed=4)
    student = copy.deepcopy(teacher)
    ids, mask, tt = _batch(seed=4)
    for method in ("ig", "gxi"):
        out = mean_attribution_similarity(teacher, student, ids, mask, tt, method=method, steps=8, top_k=3,
                                          batch_size=3)
        assert out["attr_spearman"] == pytest.approx(1.0)
        assert out["attr_topk_overlap"] == pytest.approx(1.0)
        assert out["attr_n"] == 4 and out["attr_n_spearman"] == 4
        assert len(out["attr_spearman_per_example"]) == 4


def test_different_models_are_less_similar() -> None:
    teacher = _tiny_bert(seed=5)
    student = _tiny_bert(seed=6)
    ids, mask, tt = _batch(seed=5, bsz=6)
    out = mean_attribution_similarity(teacher, student, ids, mask, tt, method="gxi", top_k=3)
    assert out["attr_spearman"] < 0.99
    assert all(-1.0 <= r <= 1.0 for r in out["attr_spearman_per_example"])


def test_attribution_similarity_by_hand() -> None:
    a = np.array([0.9, -0.5, 0.1, 0.3, 7.0])
    b = np.array([0.8, 0.4, -0.2, 0.1, 0.0])
    mask = np.array([1, 1, 1, 1, 0])
    out = attribution_similarity(a, b, mask, top_k=2)
    ranks_a = [4, 3, 1, 2]
    ranks_b = [4, 3, 2, 1]
    d2 = sum((x - y) ** 2 for x, y in zip(ranks_a, ranks_b))
    expected_rho = 1 - 6 * d2 / (4 * (4**2 - 1))
    assert out["spearman"] == pytest.approx(expected_rho)
    assert out["topk_overlap"] == pytest.approx(1.0)
    out3 = attribution_similarity(a, b, mask, top_k=3)
    assert out3["topk_overlap"] == pytest.approx(2 / 3)
    capped = attribution_similarity(a, b, mask, top_k=10)
    assert capped["topk_overlap"] == pytest.approx(1.0)
    assert math.isnan(attribution_similarity(a, b, np.zeros(5))["spearman"])
    assert attribution_similarity(torch.tensor(a), torch.tensor(a), torch.tensor(mask))["spearman"] == 1.0
