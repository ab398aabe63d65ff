"""Phase 4: the student learns a curriculum over tasks by REINFORCE.

At step t the policy picks a task; the student takes one update on a quiz batch of that task
(L = CE − mean p_S(y|x) + mean p_T'(y|h_S), the T' term on the main task only, since T' knows
only its labels); *then* the reward compares student and T' on the next main-task quiz batch,
so each reward measures the update it rewards. ``method.authors_episode_update=true`` restores
the authors' timing instead: student gradients summed over the episode and applied at its end,
and the reward of step t credited to the action chosen after it.

Controls separate "the policy chose well" from "more steps on quiz data": ``method.policy=uniform``,
``main_only`` or ``fixed`` choose each step's task without the policy (which is then not trained) and
change nothing else; ``method.curriculum_loss=ce`` trains the same steps on plain CE.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from mpdistil.config import ConfigError
from mpdistil.context import RunContext
from mpdistil.data.encode import EncodedSplit, iterate, model_inputs
from mpdistil.losses import curriculum_student_loss, episode_policy_loss, hard_loss, label_score, reward
from mpdistil.models.policy import Policy, pooler_weight
from mpdistil.phases import Phase, Row, register_phase
from mpdistil.training import BestKeeper


@register_phase("curriculum")
class CurriculumPhase(Phase):
    row = Row("mpdistil", "student, MPDistil (curriculum)", student=True)
    trains = ("student", "policy")
    reads = ("teacher", "student", "meta_teacher")
    fields = ("method.curriculum", "method.curriculum_tasks", "method.reward", "method.episodes",
              "method.episode_length", "method.gamma", "method.policy_lr", "method.policy_state",
              "method.curriculum_lr", "method.select_every", "method.authors_episode_update",
              "method.authors_no_dropout", "method.policy", "method.policy_task", "method.curriculum_loss",
              "method.curriculum_mt_grad", "method.meta_input")
    # salt of the generator the controls draw their actions from, apart from the data order's (5)
    control_salt = 6

    @classmethod
    def check(cls, cfg: Any) -> None:
        m = cfg.method
        if not 0.0 <= m.gamma <= 1.0:
            raise ConfigError(f"method.gamma={m.gamma} must lie in [0, 1]")
        for key in ("episodes", "select_every"):
            if m[key] <= 0:
                raise ConfigError(f"method.{key}={m[key]} must be a positive integer")
        for key in ("policy_lr", "curriculum_lr"):
            if m[key] <= 0:
                raise ConfigError(f"method.{key}={m[key]} must be > 0")
        if m.episode_length is not None and m.episode_length <= 0:
            raise ConfigError(f"method.episode_length={m.episode_length} must be a positive integer or null")
        actions = [cfg.task.name, *m.curriculum_tasks]
        if m.policy == "fixed" and m.policy_task not in actions:
            raise ConfigError(f"method.policy=fixed needs method.policy_task=<one of the actions {actions}>, "
                              f"got {m.policy_task!r}")

    @classmethod
    def aux_tasks(cls, cfg: Any) -> list[str]:
        return list(cfg.method.curriculum_tasks) if cfg.method.curriculum else []

    def epochs(self, ctx: RunContext) -> int:
        return ctx.cfg.method.episodes if ctx.cfg.method.curriculum else 0

    def row_agent(self, ctx: RunContext) -> torch.nn.Module:
        return ctx.student

    def prepare(self, ctx: RunContext) -> None:
        """The auxiliary tasks' heads on the student and the policy (a resumed run loads their weights after)."""
        m, student = ctx.cfg.method, ctx.student
        # default partners without files were left out when the data was prepared (recorded in results.json)
        self.tasks = [ctx.task.name] + [t for t in m.curriculum_tasks if t != ctx.task.name and t in ctx.aux]
        self.kinds = {ctx.task.name: ctx.task.kind}
        self.quiz: dict[str, EncodedSplit] = {ctx.task.name: ctx.splits["quiz"]}
        for name in self.tasks[1:]:
            aux = ctx.aux[name]
            student.add_task(name, aux.info.num_outputs, aux.info.kind)
            self.kinds[name] = aux.info.kind
            self.quiz[name] = aux.quiz
        if m.policy == "fixed" and m.policy_task not in self.tasks:
            raise ConfigError(f"method.policy_task={m.policy_task} is not an action of this run (its files are "
                              f"missing, see results.json); choose one of {self.tasks}")
        if "policy" not in ctx.agents:
            state_dim = student.hidden_size if m.policy_state == "pooler" else 2 * len(self.tasks) + 1
            ctx.agents["policy"] = Policy(m.policy_state, len(self.tasks), state_dim).to(ctx.rt.device)
        self.policy = ctx.agents["policy"]

    def start(self, ctx: RunContext) -> None:
        m, rt, student = ctx.cfg.method, ctx.rt, ctx.student
        self.mt = ctx.meta_teacher()
        self.mt.requires_grad_(False)
        self.opt_student = rt.optimizer(student.parameters(), m.curriculum_lr)
        self.opt_policy = rt.optimizer(self.policy.parameters(), m.policy_lr)
        self.best = BestKeeper("curriculum")
        main_quiz = ctx.splits["quiz"]
        self.mt_quiz_logits = ctx.meta_teacher_logits("quiz")
        bs = ctx.cfg.trainer.batch_size
        self.steps = m.episode_length or math.ceil(len(main_quiz) / bs)
        self.episodes: list[dict[str, Any]] = []
        self.last_reward = 0.0
        # The quiz-statistics state reads the same probe batch of each task at every step: collate them once.
        # A full batch of the shortest quiz examples, not rt.batches, whose padding bound may cut it short.
        self.probes = {name: next(iterate(self.quiz[name], bs, rt.pad_id, device=rt.device)) for name in self.tasks} \
            if m.policy_state == "quiz_stats" else {}

    def _batches(self, ctx: RunContext, task: str, episode: int) -> Iterator[dict[str, Any]]:
        """Endless shuffled quiz batches of one task."""
        return ctx.endless_batches(self.quiz[task], 5, episode, self.tasks.index(task))

    @torch.no_grad()
    def state(self, ctx: RunContext) -> torch.Tensor:
        if ctx.cfg.method.policy_state == "pooler":
            return pooler_weight(ctx.student).detach().float().clone()
        return self.quiz_stats(ctx)

    @torch.no_grad()
    def quiz_stats(self, ctx: RunContext) -> torch.Tensor:
        """Mean p(y|x) and loss of the student on a fixed probe batch of each task, and the last reward."""
        student, rt = ctx.student, ctx.rt
        was = student.training
        student.eval()
        feats = []
        for name in self.tasks:
            probe = self.probes[name]
            with rt.autocast():
                logits = student(**model_inputs(probe), task=name).logits
            feats += [float(label_score(logits, probe["labels"], self.kinds[name]).mean()),
                      float(hard_loss(logits, probe["labels"], self.kinds[name]))]
        student.train(was)
        return torch.tensor(feats + [self.last_reward], device=rt.device)

    def student_loss(self, ctx: RunContext, name: str, batch: dict[str, Any]) -> torch.Tensor:
        """The student's loss on one quiz batch of task ``name``, as method.curriculum_loss and _mt_grad say."""
        m = ctx.cfg.method
        with ctx.rt.autocast():
            out = ctx.student(**model_inputs(batch), task=name)
            h = out.pooled if m.meta_input == "pooled" else out.cls  # what T' was trained on in phase 3
            mt_s = self.mt(h, "student", self.quiz[name].num_choices) \
                if name == ctx.task.name and m.curriculum_loss == "mpdistil" else None
            return curriculum_student_loss(out.logits, batch["labels"], self.kinds[name], mt_s,
                                           form=m.curriculum_loss, meta_grad=m.curriculum_mt_grad)

    def control_probs(self, ctx: RunContext) -> list[float]:
        """The distribution a control draws each step's task from."""
        m, n = ctx.cfg.method, len(self.tasks)
        if m.policy == "uniform":
            return [1.0 / n] * n
        chosen = self.tasks.index(m.policy_task) if m.policy == "fixed" else 0
        return [float(i == chosen) for i in range(n)]

    def run_epoch(self, ctx: RunContext, episode: int) -> dict[str, float]:
        m, rt, student, main = ctx.cfg.method, ctx.rt, ctx.student, ctx.task.name
        train_mode = not m.authors_no_dropout
        student.train(train_mode)
        iters = {t: self._batches(ctx, t, episode) for t in self.tasks}
        reward_batches = self._batches(ctx, main, episode + 1_000_003)
        learned = m.policy == "learned"
        # A control draws its tasks from its own generator (seeded per episode, so a resumed run draws the same);
        # the policy still samples from the global one, unused, so dropout masks follow the same random stream
        # as under the learned policy: a control run differs from it only where the tasks chosen differ.
        control = None if learned else torch.tensor(self.control_probs(ctx))
        draws = None if learned else ctx.generator(self.control_salt, episode)
        log_probs, rewards, actions, first_probs = [], [], [], None
        for _ in range(self.steps):
            with torch.set_grad_enabled(learned and torch.is_grad_enabled()):
                dist = self.policy(self.state(ctx))
            action = rt.world.broadcast(int(dist.sample()))  # rank 0's draw: every rank trains on one task
            if control is None:
                log_probs.append(dist.log_prob(torch.tensor(action, device=rt.device)))
            else:
                action = int(torch.multinomial(control, 1, generator=draws))
            if first_probs is None:
                first_probs = (dist.probs.detach().float().cpu() if control is None else control).tolist()
            name = self.tasks[action]
            batch = next(iters[name])
            loss = self.student_loss(ctx, name, batch)
            if m.authors_episode_update:
                rt.backward(loss, "student (curriculum)", batch)
            else:
                rt.step(loss, self.opt_student, "student (curriculum)", batch=batch)
            rewards.append(self._reward(ctx, next(reward_batches), train_mode))
            actions.append(name)
            self.last_reward = rewards[-1]
        if m.authors_episode_update:
            self._apply_accumulated(ctx)
        row: dict[str, float] = {"reward": float(sum(rewards))}
        if learned:  # under a control the policy is not trained: its log-probabilities did not choose the tasks
            policy_loss = episode_policy_loss(torch.stack(log_probs), rewards, m.gamma, m.authors_episode_update)
            rt.step(policy_loss, self.opt_policy, "policy")
            row["policy_loss"] = float(policy_loss.detach())
        metrics, improved = {}, False
        if (episode + 1) % m.select_every == 0 or episode == self.epochs(ctx) - 1:
            with ctx.timed("curriculum_selection"):  # part of the curriculum's time, reported apart
                before = self.best.epoch
                metrics = ctx.select(self.best, student, episode, lambda split: ctx.evaluate(student, split))
            improved = self.best.epoch != before
        row.update({f"sel_{k}": v for k, v in metrics.items()})
        counts = Counter(actions)
        self.episodes.append({"episode": episode, "reward": row["reward"], "trajectory": actions,
                              "rewards": rewards, "selection": metrics, "best_so_far": improved,
                              "action_probs": first_probs,
                              "action_frequencies": [counts.get(t, 0) / len(actions) for t in self.tasks]})
        return row

    def _apply_accumulated(self, ctx: RunContext) -> None:
        """The authors' timing: one step with the gradients summed over the whole episode."""
        opt = self.opt_student
        ctx.rt.apply(opt, [p for g in opt.param_groups for p in g["params"] if p.grad is not None])

    @torch.no_grad()
    def _reward(self, ctx: RunContext, batch: dict[str, Any], train_mode: bool) -> float:
        student, rt = ctx.student, ctx.rt
        student.eval()
        with rt.autocast():
            logits = student(**model_inputs(batch)).logits.float()
        student.train(train_mode)
        # with several processes, the whole batch's logits: every rank computes the reward of the same batch
        logits = rt.world.batch_rows(logits, batch)
        index = batch.get("batch_index", batch["index"]).cpu()
        quiz = ctx.splits["quiz"]
        return reward(logits, self.mt_quiz_logits[index].to(rt.device), quiz.labels[index].to(rt.device),
                      ctx.task.kind, ctx.cfg.method.reward, len(quiz))

    def finish(self, ctx: RunContext) -> dict[str, Any]:
        self.best.restore(ctx.student)
        self.mt.requires_grad_(True)
        m = ctx.cfg.method
        counts = Counter(a for ep in self.episodes for a in ep["trajectory"])
        total = max(sum(counts.values()), 1)
        with torch.no_grad():
            final_probs = self.policy(self.state(ctx)).probs.cpu().tolist()
        drawn_from = "the policy at each episode's first step" if m.policy == "learned" \
            else f"the control's distribution (method.policy={m.policy})"
        plot = policy_plot(ctx.out_dir / f"policy_{self.row.name}.png", self.tasks, self.episodes,
                           f"curriculum ({self.row.name}): task probabilities from {drawn_from}") \
            if self.episodes else None  # method.curriculum=false: no episode to draw
        if plot:
            ctx.logger.image("curriculum/policy", plot)
        ctx.logger.table("curriculum/trajectories", ["episode", "step", "task", "reward"],
                         [[ep["episode"], t, a, r] for ep in self.episodes
                          for t, (a, r) in enumerate(zip(ep["trajectory"], ep["rewards"]))])
        best = self.episodes[self.best.epoch] if self.best.epoch is not None else {}
        ctx.logger.summary({"curriculum/best_episode": self.best.epoch,
                            "curriculum/best_reward": best.get("reward"),
                            **{f"curriculum/best_{k}": v for k, v in self.best.metrics.items()}})
        return {
            "tasks": self.tasks, "reward": ctx.cfg.method.reward, "steps_per_episode": self.steps,
            "best_episode": self.best.epoch, "selection": self.best.metrics,
            "episode_rewards": [ep["reward"] for ep in self.episodes],
            "trajectories": [ep["trajectory"] for ep in self.episodes],
            "action_distribution": {t: counts.get(t, 0) / total for t in self.tasks},
            "final_policy": dict(zip(self.tasks, final_probs)),
            "authors_episode_update": m.authors_episode_update,
            "policy": m.policy, "policy_task": m.policy_task if m.policy == "fixed" else None,
            "curriculum_loss": m.curriculum_loss, "curriculum_mt_grad": m.curriculum_mt_grad,
            # per episode: the distribution its first action was drawn from, and the share of each task in it
            "action_probs_from": drawn_from,
            "episode_action_probs": [dict(zip(self.tasks, ep["action_probs"])) for ep in self.episodes],
            "episode_action_frequencies": [dict(zip(self.tasks, ep["action_frequencies"])) for ep in self.episodes],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"opt_student": self.opt_student.state_dict(), "opt_policy": self.opt_policy.state_dict(),
                "best": self.best.state_dict(), "episodes": self.episodes, "last_reward": self.last_reward}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_student.load_state_dict(state["opt_student"])
        self.opt_policy.load_state_dict(state["opt_policy"])
        self.best.load_state_dict(state["best"])
        self.episodes = state["episodes"]
        self.last_reward = state["last_reward"]


def policy_plot(path: Path, tasks: list[str], episodes: list[dict[str, Any]], title: str) -> Optional[Path]:
    """What the curriculum learned: reward per episode, and each task's probability at the episode's first step
    (lines) and share of its steps (dots) against the uniform 1/n a policy that learned nothing would sit near."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    x = [ep["episode"] + 1 for ep in episodes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    left.plot(x, [ep["reward"] for ep in episodes], marker="." if len(x) < 50 else None)
    left.set_xlabel("episode")
    left.set_ylabel("episode reward")
    right.axhline(1.0 / len(tasks), color="grey", linestyle="--", label=f"uniform 1/{len(tasks)}")
    for i, task in enumerate(tasks):
        line, = right.plot(x, [ep["action_probs"][i] for ep in episodes], label=task)
        right.plot(x, [ep["action_frequencies"][i] for ep in episodes], linestyle="none", marker=".",
                   color=line.get_color(), alpha=0.4)
    right.set_ylim(-0.02, 1.02)
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("episode")
    right.set_ylabel("P(task): line; share of steps: dots")
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
