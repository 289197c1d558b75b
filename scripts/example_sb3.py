"""FairGrad in a Stable-Baselines3 agent: train ``MultiTaskSAC`` on Meta-World tasks and score it.

    python scripts/example_sb3.py                                   # 3 easy tasks, 40,000 iterations
    python scripts/example_sb3.py --steps 2000 --device cpu         # a quick look
    python scripts/example_sb3.py --combiner mean --json out.json   # the baseline, results as JSON

Every ``--eval-every`` iterations (one iteration = one step of every task's env) the agent is scored
with Meta-World's protocol (:func:`mtrl_fair.evaluate`, 10 episodes per task), and at the end with
``--eval-episodes`` episodes per task. The hyperparameters are the reference MTSAC ones, as in
``mtrl-fair train``: 3×400 MLPs, 128 transitions per task, Adam 3e-4, 5,000 random warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from stable_baselines3.common.callbacks import BaseCallback

import mtrl_fair
from mtrl_fair.sb3 import MultiTaskSAC, make_vec_env

EASY_TASKS = ["reach-v3", "drawer-close-v3", "button-press-topdown-v3"]


class MetaWorldEval(BaseCallback):
    """A progress bar, and Meta-World's protocol every ``every`` iterations into SB3's logger."""

    def __init__(self, tasks: list[str], every: int, total: int, episodes: int = 10) -> None:
        super().__init__()
        self.tasks, self.every, self.episodes = tasks, every, episodes
        self.curve: list[dict[str, float]] = []
        self.progress = Progress(
            TextColumn("[bold]MultiTaskSAC"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        )
        self.bar = self.progress.add_task("train", total=total)

    def _on_training_start(self) -> None:
        self.progress.start()

    def _on_training_end(self) -> None:
        self.progress.stop()

    def _on_step(self) -> bool:
        iteration = self.num_timesteps // len(self.tasks)
        self.progress.update(self.bar, completed=iteration)
        if self.every and iteration % self.every == 0:
            result = mtrl_fair.evaluate(self.model, "MT10", episodes=self.episodes, seed=1, tasks=self.tasks)
            self.logger.record("eval/success_rate", result.mean_success)
            for task, rate in result.per_task.items():
                self.logger.record(f"eval/success_rate/{task}", rate)
            self.curve.append({"step": iteration, "success": result.mean_success, **result.per_task})
            print(f"iteration {iteration}: success {result.mean_success:.2f} {result.per_task}", flush=True)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=EASY_TASKS)
    parser.add_argument("--combiner", default="fairgrad")
    parser.add_argument("--alpha", type=float, default=2.0, help="FairGrad's alpha")
    parser.add_argument("--steps", type=int, default=40_000, help="iterations (each steps every task once)")
    parser.add_argument("--warmup", type=int, default=5_000, help="iterations of random actions first")
    parser.add_argument("--eval-every", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="save the trained model here (.zip)")
    parser.add_argument("--json", default=None, help="write the evaluation results here")
    args = parser.parse_args()

    env = make_vec_env("MT10", args.tasks, seed=args.seed)
    num_tasks = len(args.tasks)
    model = MultiTaskSAC(
        "MlpPolicy",
        env,
        combiner=args.combiner,
        combiner_kwargs={"alpha": args.alpha} if args.combiner == "fairgrad" else None,
        policy_kwargs={"net_arch": [400, 400, 400]},
        learning_rate=3e-4,
        batch_size=128 * num_tasks,
        buffer_size=100_000 * num_tasks,
        learning_starts=args.warmup * num_tasks,  # SB3 counts every task's step
        per_task_temperature=True,
        seed=args.seed,
        device=args.device,
    )
    evaluation = MetaWorldEval(args.tasks, args.eval_every, args.steps)
    start = time.perf_counter()
    model.learn(total_timesteps=args.steps * num_tasks, callback=evaluation)
    wall = time.perf_counter() - start
    if args.save:
        model.save(args.save)
    final = mtrl_fair.evaluate(model, "MT10", episodes=args.eval_episodes, seed=0, tasks=args.tasks)
    print(final.to_markdown())
    if args.json:
        record = {
            "combiner": args.combiner,
            "steps": args.steps,
            "device": str(model.device),
            "wall_s": wall,
            "final": final.to_dict(),
            "curve": evaluation.curve,
        }
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=2)
    env.close()


if __name__ == "__main__":
    main()
