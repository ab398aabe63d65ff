"""The tables this tool runs and renders, and the ablation settings it compares with the full method."""
from __future__ import annotations

from dataclasses import dataclass

from paper_tables import CPU_GLUE_COLUMNS, GLUE_COLUMNS, ROWS, SUPERGLUE_COLUMNS, Column


@dataclass(frozen=True)
class TableSpec:
    """A table kind: which experiment preset produces it and which paper table it is compared with."""

    name: str
    experiment: str
    paper: str
    columns: tuple[Column, ...]
    title: str


TABLES: dict[str, TableSpec] = {
    "table1a": TableSpec("table1a", "table1a", "1a", SUPERGLUE_COLUMNS,
                         "Table 1a: SuperGLUE dev, BERT-base teacher -> 6-layer student"),
    "table1b": TableSpec("table1b", "table1b", "1b", SUPERGLUE_COLUMNS,
                         "Table 1b: SuperGLUE dev, DeBERTa-v2-xxlarge teacher -> 12-layer student"),
    "table4": TableSpec("table4", "table4", "4", GLUE_COLUMNS,
                        "Table 4: GLUE dev, BERT-base teacher -> 6-layer student"),
    "cpu_repro": TableSpec("cpu_repro", "cpu_repro", "1a", SUPERGLUE_COLUMNS,
                           "CPU reproduction: SuperGLUE dev, MiniLM-L6 teacher -> 3-layer student "
                           "(paper values: Table 1a, BERT-base -> 6 layers, for reference only)"),
    "cpu_heldout": TableSpec("cpu_heldout", "cpu_heldout", "1a", SUPERGLUE_COLUMNS,
                             "CPU reproduction, held-out selection: SuperGLUE dev, MiniLM-L6 teacher -> 3-layer "
                             "student, every agent chosen on a slice of train nothing trains on (paper values: "
                             "Table 1a, for reference only)"),
    "cpu_repro_glue": TableSpec("cpu_repro_glue", "cpu_repro", "4", CPU_GLUE_COLUMNS,
                                "CPU reproduction: GLUE dev, MiniLM-L6 teacher -> 3-layer student "
                                "(paper values: Table 4, BERT-base -> 6 layers, for reference only; CoLA: MCC)"),
}


@dataclass(frozen=True)
class Ablation:
    """One ablation setting: the overrides that turn the full method into it."""

    overrides: tuple[str, ...]
    description: str
    method: str = "mpdistil"


AUTHORS_CODE = ("method.soft_loss=mse", "method.layer_map=first", "method.authors_episode_update=true",
                "method.curriculum_mt_grad=false", "method.authors_no_dropout=true", "method.curriculum_tasks=[]")

ABLATIONS: dict[str, Ablation] = {
    "full": Ablation((), "full method: col + binary, curriculum on, tasks chosen by the learned policy"),
    "meta_com": Ablation(("method.meta_loss=com",), "competitive meta-teacher loss"),
    "meta_none": Ablation(("method.meta_loss=none",), "no meta-teacher learning (phase 3 off)"),
    "reward_real": Ablation(("method.reward=real",), "real-valued reward"),
    "policy_quiz_stats": Ablation(("method.policy_state=quiz_stats",), "policy state: per-task quiz statistics"),
    # controls of the curriculum: the same steps, batches and selection; only the task choice or the loss differs
    "uniform": Ablation(("method.policy=uniform",), "control: each step's task drawn uniformly, policy untrained"),
    "main_only": Ablation(("method.policy=main_only",), "control: every step on the main task, policy untrained"),
    "ce_only": Ablation(("method.curriculum_loss=ce",), "control: the curriculum's steps on plain CE (no p_S, no T')"),
    "no_mt_grad": Ablation(("method.curriculum_mt_grad=false",),
                           "authors' code: the curriculum's T' term without gradient"),
    "meta_mlp": Ablation(("method.meta_teacher=mlp",), "meta-teacher: MLP instead of the teacher's head"),
    "meta_pilot": Ablation(("method.meta_objective=pilot",), "meta-teacher trained by the pilot update"),
    "meta_mixed": Ablation(("method.meta_objective=mixed",), "meta-teacher: (1-λ)·L_col + λ·L_quiz, λ = 0.5"),
    "select_quiz": Ablation(("trainer.selection_split=quiz",),
                            "every agent selected on quiz (what phases 3-4 train on)"),
    "select_heldout": Ablation(("trainer.selection_split=heldout",),
                               "every agent selected on a held-out slice of train that nothing trains on"),
    "select_dev": Ablation(("trainer.selection_split=dev",), "every agent selected on dev (the paper's protocol)"),
    "select_last": Ablation(("trainer.selection_split=last",), "no selection: the last epoch and episode"),
    "soft_mse": Ablation(("method.soft_loss=mse",), "authors' code: MSE soft loss"),
    "layers_first": Ablation(("method.layer_map=first",), "authors' code: layers mapped first-to-first"),
    "episode_update": Ablation(("method.authors_episode_update=true",),
                               "authors' code: one student update per episode"),
    "no_dropout": Ablation(("method.authors_no_dropout=true",), "authors' code: dropout never active"),
    "single_action": Ablation(("method.curriculum_tasks=[]",), "authors' code: the main task as the only action"),
    "authors_code": Ablation(AUTHORS_CODE, "every authors'-code deviation at once "
                                           "(= experiment=ablation_authors_code on cpu_repro)"),
    "tau2": Ablation(("method.temperature=2",), "temperature 2 instead of 5"),
    "metadistil": Ablation((), "baseline: MetaDistil (teacher updated through a pilot student step), no curriculum",
                           method="metadistil"),
}

STUDENT_ROWS = frozenset(ROWS) - {"teacher", "meta_col", "meta_com"}
