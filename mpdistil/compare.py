"""Compare two saved models on a task without training:

    python -m mpdistil.compare teacher=<folder> student=<folder> task=<name> [data_dir=...] [out=report.json]

Both folders are ``save_pretrained`` sequence classifiers with their tokenizers (a run's ``student/``
folder is one; ``trainer.save_teacher=true`` also writes ``teacher/``). Each model reads its own
tokenizer's encoding of the same examples (one encoding when the two tokenise alike), and fidelity
compares them example by example; with different tokenizers, attribution similarity is measured over
words instead of tokens. Prints task metrics of each and the fidelity of the student to the teacher
per dev split, and writes them as JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from mpdistil.config import ConfigError, TrainerConfig, cache_root
from mpdistil.errors import fail_cleanly

USAGE = ("usage: python -m mpdistil.compare teacher=<folder> student=<folder> task=<name> [data_dir=<folder>] "
         "[max_examples=N] [attribution=gxi|ig|none] [device=auto|cpu|cuda] [out=<file.json>]")
KEYS = {"teacher", "student", "task", "data_dir", "max_examples", "attribution", "device", "out", "batch_size",
        "cache_dir"}


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in KEYS:
            raise ConfigError(f"unexpected argument {item!r}; {USAGE}")
        args[key] = value
    missing = [k for k in ("teacher", "student", "task") if k not in args]
    if missing:
        raise ConfigError(f"missing {', '.join(missing)}; {USAGE}")
    return args


def evaluate_pair(teacher_dir: str, student_dir: str, task: str, data_dir: Optional[str] = None,
                  max_examples: Optional[int] = None, attribution: str = "gxi", device: str = "auto",
                  batch_size: int = 64, cache_dir: Optional[str] = None) -> dict[str, Any]:
    from mpdistil.data.encode import encode_examples
    from mpdistil.data.registry import get_task_spec, load_task, task_config_for
    from mpdistil.data.splits import subsample
    from mpdistil.evaluation import compare, paired_attributions
    from mpdistil.metrics.task_metrics import compute_metrics
    from mpdistil.models.agent import Agent
    from mpdistil.models.loading import load_classifier, load_tokenizer, resolve_model_source, same_tokenizer
    from mpdistil.training import Runtime, predict, predictions_from_logits, resolve_device

    t_src, s_src = resolve_model_source(teacher_dir, cache_dir)[0], resolve_model_source(student_dir, cache_dir)[0]
    tokenizer = load_tokenizer(t_src)
    student_tokenizer = load_tokenizer(s_src)
    if same_tokenizer(tokenizer, student_tokenizer):
        student_tokenizer = tokenizer
    tcfg = task_config_for(task)
    cache = cache_root(cache_dir)
    data = load_task(tcfg, data_dir, cache)
    spec = get_task_spec(task, tcfg)
    rt = Runtime(resolve_device(device), eval_batch_size=batch_size, pad_id=tokenizer.pad_token_id or 0,
                 progress=False, max_padding=TrainerConfig.eval_max_padding)
    agents = {}
    for name, src in (("teacher", t_src), ("student", s_src)):
        hf = load_classifier(src)
        if data.kind == "classification" and hf.config.num_labels != data.num_labels:
            raise ConfigError(f"{name} has {hf.config.num_labels} outputs but {task} has {data.num_labels} labels; "
                              "compare models trained on this task")
        agents[name] = Agent(hf, task, data.kind).to(rt.device).eval()
    report: dict[str, Any] = {"task": task, "teacher": teacher_dir, "student": student_dir, "splits": {}}
    for split_name, examples in data.dev.items():
        examples = subsample(examples, max_examples, 0) if max_examples else examples
        split = encode_examples(tokenizer, examples, task, split_name, data.kind, tcfg.max_length, cache)
        student_split = split if student_tokenizer is tokenizer else \
            encode_examples(student_tokenizer, examples, task, split_name, data.kind, tcfg.max_length, cache)
        own = {"teacher": split, "student": student_split}
        logits = {n: predict(a, own[n], rt)["logits"] for n, a in agents.items()}
        entry: dict[str, Any] = {
            n: compute_metrics(spec.metrics, predictions_from_logits(lg, data.kind).numpy(), split.labels.numpy())
            for n, lg in logits.items()}
        entry["fidelity"] = compare(logits["teacher"], logits["student"], split.labels, data.kind)
        if attribution != "none" and data.kind != "multiple_choice":
            sim = paired_attributions(agents["teacher"].hf, agents["student"].hf, split, student_split,
                                      list(range(min(len(split), 32))), rt.device, attribution, 16, 5,
                                      (tokenizer, student_tokenizer), tcfg.max_length, rt.pad_id)
            sim.pop("attr_spearman_per_example", None)
            entry["fidelity"].update(sim)
        report["splits"][split_name] = entry
    return report


def main(argv: Sequence[str]) -> None:
    with fail_cleanly():
        args = parse_args(argv)
        report = evaluate_pair(args["teacher"], args["student"], args["task"], args.get("data_dir"),
                               int(args["max_examples"]) if "max_examples" in args else None,
                               args.get("attribution", "gxi"), args.get("device", "auto"),
                               int(args.get("batch_size", 64)), args.get("cache_dir"))
    for split, entry in report["splits"].items():
        print(f"[{split}]")
        for who in ("teacher", "student"):
            print(f"  {who:8s} " + "  ".join(f"{k} {100 * v:.1f}" for k, v in entry[who].items()))
        fid = entry["fidelity"]
        print("  fidelity " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in fid.items() if not isinstance(v, (list, str))))
    if args.get("out"):
        from mpdistil.atomic import write_json

        write_json(Path(args["out"]), report)
        print(f"written: {args['out']}")


if __name__ == "__main__":
    main(sys.argv[1:])
