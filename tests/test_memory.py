"""Memory switches: gradient checkpointing changes no number; a bf16 frozen teacher is read where it should be."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from mpdistil.config import ConfigError, validate
from mpdistil.models.agent import Agent, enable_gradient_checkpointing
from mpdistil.models.meta_teacher import MetaTeacher
from tests.helpers import make_cfg, run_cfg
from tests.test_determinism import deterministic_flags_restored  # noqa: F401  (fixture)
from tests.test_resume import TINY, comparable


def tiny_agent(seed: int = 0) -> Agent:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return Agent(BertForSequenceClassification(config), "main", "classification")


def step_gradients(agent: Agent, forwards: list[int]) -> list[torch.Tensor]:
    """Gradients of one training step with dropout on; ``forwards`` counts calls of the first layer's feed-forward."""
    agent.train()
    agent.hf.bert.encoder.layer[0].intermediate.register_forward_hook(lambda *_: forwards.append(1))
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (4, 10), generator=g)
    torch.manual_seed(3)  # the dropout masks
    loss = torch.nn.functional.cross_entropy(agent(input_ids=ids, attention_mask=torch.ones_like(ids)).logits,
                                             torch.tensor([0, 1, 2, 1]))
    loss.backward()
    return [p.grad.clone() for p in agent.parameters() if p.grad is not None]


def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    plain, checkpointed = tiny_agent(), tiny_agent()
    enable_gradient_checkpointing(checkpointed.hf)
    clone = copy.deepcopy(checkpointed)
    calls_plain: list[int] = []
    calls_ckpt: list[int] = []
    calls_copy: list[int] = []
    a = step_gradients(plain, calls_plain)
    b = step_gradients(checkpointed, calls_ckpt)
    step_gradients(clone, calls_copy)  # clones of an agent checkpoint too
    assert len(calls_plain) == 1 and len(calls_ckpt) == 2 and len(calls_copy) == 2  # the layer ran again in backward
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_gradient_checkpointing_is_invisible_in_results_on_the_second_order_path(tmp_path, superglue,
                                                                                 deterministic_flags_restored):  # noqa: F811
    """A whole run with a second-order pilot step (higher): bit-identical with and without checkpointing."""
    args = [*TINY, f"data_dir={superglue}", "method=mpdistil", "method.curriculum=false",
            "method.meta_objective=mixed", "method.meta_backend=higher", "trainer.deterministic=true",
            "trainer.reuse_cache=false"]
    run_cfg(tmp_path / "off", *args)
    run_cfg(tmp_path / "on", *args, "trainer.gradient_checkpointing=true")
    assert comparable(tmp_path / "on") == comparable(tmp_path / "off")


def test_gradient_checkpointing_with_functional_meta_steps_is_refused():
    with pytest.raises(ConfigError, match="method.meta_backend=higher"):
        validate(make_cfg("method=metadistil", "method.meta_backend=func", "trainer.gradient_checkpointing=true"))
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        validate(make_cfg("method=mpdistil", "method.meta_objective=pilot", "method.meta_backend=func",
                          "trainer.gradient_checkpointing=true"))
    with pytest.raises(ConfigError, match="gradient_checkpointing"):  # first order evaluates functionally too
        validate(make_cfg("method=metadistil", "method.meta_backend=func", "method.first_order=true",
                          "trainer.gradient_checkpointing=true"))
    # no pilot step in this run, or the higher backend: nothing to refuse
    validate(make_cfg("method=mpdistil", "method.meta_backend=func", "trainer.gradient_checkpointing=true"))
    validate(make_cfg("method=metadistil", "method.meta_backend=higher", "trainer.gradient_checkpointing=true"))


def test_meta_teacher_from_a_bf16_head_trains_in_fp32():
    head = torch.nn.Linear(16, 3).to(torch.bfloat16)
    mt = MetaTeacher("head", 16, 8, 3, teacher_head=head)
    assert all(p.dtype == torch.float32 for p in mt.parameters())
    assert head.weight.dtype == torch.bfloat16  # the teacher's own head is left as it is
    assert mt(torch.randn(2, 8), "student").dtype == torch.float32


@pytest.mark.parametrize("method", ["mpdistil", "metadistil"])
def test_a_bf16_frozen_teacher_is_read_by_the_later_phases_only(tmp_path, superglue, method):
    """The teacher trains and is scored in fp32 (its cache is shared with fp32 runs); every phase after it reads
    the bf16 teacher, so those phases are not reused from an fp32 run and their training differs."""
    args = [*TINY, f"data_dir={superglue}", f"method={method}", "method.curriculum=false"]
    cache = tmp_path / "cache"
    fp32 = run_cfg(tmp_path / "fp32", *args, cache_dir=cache)
    bf16 = run_cfg(tmp_path / "bf16", *args, "model.teacher_dtype=bf16", cache_dir=cache)
    assert bf16["phases"]["teacher"]["cached"] and bf16["phases"]["undistilled"]["cached"]
    assert bf16["agents"]["teacher"] == fp32["agents"]["teacher"]
    later = [p for p in bf16["phases"] if p not in ("teacher", "undistilled")]
    assert later and not any(bf16["phases"][p].get("cached") for p in later)
    assert comparable(tmp_path / "bf16")["phases"] != comparable(tmp_path / "fp32")["phases"]
