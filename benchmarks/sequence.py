"""Sequence-task comparison: the reverse_* presets on Reverse (6 symbols over an alphabet of 10).

    python benchmarks/sequence.py                      # every preset × 3 seeds, writes docs/sequence.md + figures
    python benchmarks/sequence.py --seeds 1 --presets reverse_grpo --max-steps 50000 --warm-steps 40

Each run trains in this process (one after another, so timings do not compete with each other), from a short
supervised warm start (``--warm-steps``) unless 0, and records the greedy policy's exact-match rate on 256 held-out
prompts (a split training never draws) before the first update and every ``--eval-every`` rollouts, with the env
steps, wall-clock seconds and process CPU seconds (warm start included, evaluation excluded) and the mean length of
the held-out answers and of the training answers. A run stops at ``--max-steps`` env steps or once the held-out
exact match reaches ``--stop-at``. ``--scratch`` adds from-scratch runs (no warm start) of the given presets with
``--scratch-overrides``. The presets' reward is partial credit (the share of answer positions right): a 0/1 reward
is never hit by a random policy (its chance of reversing 6 symbols and stopping is 11^-7) and, from a warm start at
~2% exact match, hardly moved GRPO in 60k steps. ``--sft-check N`` scores an N-step warm start on its own.

Results: ``docs/sequence/results.json`` (raw), ``docs/sequence/*.png`` and the table in ``docs/sequence.md``
(written between the ``<!-- results -->`` markers, the prose around them is kept). ``--no-doc`` prints the table and
writes only the raw results, to ``benchmarks/results/sequence.json`` (or ``--out``): docs/sequence/ is not touched.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import pglab.envs.tokens  # noqa: F401  registers pglab/Reverse-v0 (the bare id works whatever pglab.envs.make resolves)
from pglab.run.train import CONFIG_DIR, build

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["reverse_grpo", "reverse_gspo", "reverse_drgrpo", "reverse_ppo", "reverse_reinforce"]
LABELS = {"reverse_grpo": "GRPO", "reverse_gspo": "GSPO", "reverse_drgrpo": "Dr. GRPO", "reverse_ppo": "PPO (value)",
          "reverse_reinforce": "REINFORCE (mean)"}


class TrainingLengths(L.Callback):
    """Per rollout: env steps, mean training answer length (EOS included) and mean training return."""

    def __init__(self) -> None:
        self.history: list[dict] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        r = module.last_rollout
        if r is not None and r.episode_lengths.numel():
            self.history.append({"env_steps": int(module.env_steps), "length": float(r.episode_lengths.mean()),
                                 "return": float(r.episode_returns.mean())})


def compose_run(overrides: list[str], output_dir: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def run_one(preset: str, seed: int, args, warm_steps: int, extra: list[str]) -> dict:
    overrides = [f"experiment={preset}", f"seed={seed}", "env.id=pglab/Reverse-v0", "logger=none",
                 "eval.enabled=false", "checkpoint.enabled=false", "trainer.enable_progress_bar=false",
                 f"total_env_steps={args.max_steps}", f"callbacks.pretrain.steps={warm_steps}",
                 f"callbacks.heldout.every_n_epochs={args.eval_every}", f"callbacks.heldout.prompts={args.prompts}",
                 f"+callbacks.heldout.stop_at={args.stop_at}", *extra]
    cfg = compose_run(overrides, ROOT / "outputs" / "sequence" / f"{preset}-{seed}")
    r = build(cfg)
    lengths = TrainingLengths()
    r.trainer.callbacks.append(lengths)
    begin = time.perf_counter()
    r.trainer.fit(r.module, datamodule=r.datamodule)
    wall = time.perf_counter() - begin
    heldout = next(cb for cb in r.trainer.callbacks if type(cb).__name__ == "HeldOutAccuracy")
    warm = next((cb for cb in r.trainer.callbacks if type(cb).__name__ == "SupervisedWarmStart"), None)
    curve = heldout.history
    hit = next((p for p in curve if p["exact_match"] >= args.target), None)
    result = {"preset": preset, "seed": seed, "warm_steps": warm_steps, "overrides": overrides,
              "warm_seconds": warm.seconds if warm is not None else 0.0, "fit_seconds": wall,
              "env_steps": int(r.module.env_steps), "heldout": curve, "training": lengths.history,
              "start_exact_match": curve[0]["exact_match"], "final_exact_match": curve[-1]["exact_match"],
              "best_exact_match": max(p["exact_match"] for p in curve),
              "target_steps": hit["env_steps"] if hit else None, "target_seconds": hit["seconds"] if hit else None,
              "target_cpu_seconds": hit["cpu_seconds"] if hit else None}
    reached = f"{hit['env_steps']} steps, {hit['seconds']:.0f} s" if hit else "not reached"
    print(f"{preset} seed={seed} warm={warm_steps}: exact match {result['start_exact_match']:.3f} -> "
          f"{result['final_exact_match']:.3f} (best {result['best_exact_match']:.3f}) after {result['env_steps']} "
          f"env steps, {wall:.0f} s; >= {args.target}: {reached}", flush=True)
    return result


def _fmt(values, fmt="{:.0f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(float(np.median(values)))} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def table(results: list[dict], target: float) -> str:
    lines = [f"| preset | warm start (steps) | seeds | held-out exact match: start → end (mean) | reached "
             f"≥ {target:.0%} | env steps to {target:.0%} | wall-clock s to {target:.0%} | CPU s to {target:.0%} |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["preset"], r["warm_steps"], json.dumps(r.get("extra", []))) for r in results},
                  key=lambda k: (k[2] != "[]", PRESETS.index(k[0]) if k[0] in PRESETS else 99, k[2], -k[1]))
    for preset, warm_steps, extra in keys:
        rows = [r for r in results if (r["preset"], r["warm_steps"], json.dumps(r.get("extra", []))) == (
            preset, warm_steps, extra)]
        reached = sum(r["target_steps"] is not None for r in rows)
        label = LABELS.get(preset, preset) + ("" if extra == "[]" else " " + " ".join(json.loads(extra)))
        lines.append(
            f"| {label} | {warm_steps} | {len(rows)} | {np.mean([r['start_exact_match'] for r in rows]):.1%} → "
            f"{np.mean([r['final_exact_match'] for r in rows]):.1%} | {reached}/{len(rows)} | "
            f"{_fmt([r['target_steps'] for r in rows])} | {_fmt([r['target_seconds'] for r in rows])} | "
            f"{_fmt([r['target_cpu_seconds'] for r in rows])} |")
    return "\n".join(lines)


def plot(results: list[dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = {}
    for r in results:
        label = LABELS.get(r["preset"], r["preset"]) + f" (warm {r['warm_steps']})" + (
            "" if not r.get("extra") else " " + " ".join(r["extra"]))
        groups.setdefault(label, []).append(r)
    colors = dict(zip(groups, plt.cm.tab10.colors, strict=False))
    written = []
    specs = [("accuracy_vs_steps.png", "heldout", "env_steps", "exact_match", "env steps", "held-out exact match"),
             ("accuracy_vs_wallclock.png", "heldout", "seconds", "exact_match", "wall-clock seconds (warm start incl.)",
              "held-out exact match"),
             ("accuracy_vs_cpu.png", "heldout", "cpu_seconds", "exact_match", "process CPU seconds (warm start incl.)",
              "held-out exact match"),
             ("length_vs_steps.png", "training", "env_steps", "length", "env steps",
              "training answer length (tokens, EOS incl.)")]
    for name, series, x_key, y_key, x_label, y_label in specs:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, runs in groups.items():
            for i, r in enumerate(runs):
                points = r[series]
                ax.plot([p[x_key] for p in points], [p[y_key] for p in points], color=colors[label], alpha=0.8,
                        lw=1.2, label=label if i == 0 else None)
        if y_key == "exact_match":
            ax.axhline(0.95, color="grey", ls=":", lw=1)
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write_doc(results: list[dict], args, figures: list[str]) -> None:
    doc = ROOT / "docs" / "sequence.md"
    text = doc.read_text() if doc.exists() else "# Sequence tasks\n\n<!-- results -->\n<!-- /results -->\n"
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} " \
              f"torch thread(s)"
    block = [f"Generated by `python benchmarks/sequence.py {' '.join(sys.argv[1:])}` ({machine}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}). Medians with [min–max] over seeds; seconds are this process's own "
             "wall-clock and CPU time (warm start included, held-out evaluation excluded).", "",
             table(results, args.target), ""]
    block += [f"![{name}](sequence/{name})" for name in figures]
    start, end = "<!-- results -->", "<!-- /results -->"
    head, rest = text.split(start, 1) if start in text else (text + "\n", end)
    tail = rest.split(end, 1)[1] if end in rest else ""
    doc.write_text(head + start + "\n" + "\n".join(block) + "\n" + end + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=PRESETS)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--warm-steps", type=int, default=30, help="supervised warm-start steps (0: from scratch)")
    parser.add_argument("--eval-every", type=int, default=5, help="rollouts between held-out evaluations")
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts per evaluation")
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--stop-at", type=float, default=0.99, help="stop a run once held-out exact match >= this")
    parser.add_argument("--scratch", nargs="*", default=[], help="presets to also run from scratch")
    parser.add_argument("--scratch-seeds", type=int, default=1)
    parser.add_argument("--scratch-steps", type=int, default=150_000)
    parser.add_argument("--scratch-overrides", nargs="*", default=[])
    parser.add_argument("--sft-check", type=int, nargs="*", default=[],
                        help="warm-start step counts to score alone (one rollout of RL, so the start is pure SFT)")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides for the main runs")
    parser.add_argument("--append", action="store_true", help="add to the results file (--out) instead of replacing")
    parser.add_argument("--no-doc", action="store_true",
                        help="only print and save the raw results (to --out; docs/sequence/ is left as it is)")
    parser.add_argument("--out", type=Path, default=None,
                        help="raw results file (default: docs/sequence/results.json, the data behind the doc; with "
                             "--no-doc benchmarks/results/sequence.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out_dir = ROOT / "docs" / "sequence"
    # a trial run (--no-doc) must not replace the committed results the doc's table and figures were made from
    raw = args.out or (ROOT / "benchmarks" / "results" / "sequence.json" if args.no_doc else out_dir / "results.json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_doc:
        out_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads(raw.read_text()) if args.append and raw.exists() else []
    for preset in args.presets:
        for seed in range(args.seeds):
            result = run_one(preset, seed, args, args.warm_steps, list(args.overrides))
            if args.overrides:
                result["extra"] = list(args.overrides)
            results.append(result)
            raw.write_text(json.dumps(results, indent=1))
    for warm_steps in args.sft_check:
        for seed in range(args.seeds):
            sft_args = argparse.Namespace(**{**vars(args), "max_steps": 1})
            result = run_one("reverse_grpo", seed, sft_args, warm_steps, [])
            result["extra"] = ["(warm start only)"]
            results.append(result)
            raw.write_text(json.dumps(results, indent=1))
    for preset in args.scratch:
        for seed in range(args.scratch_seeds):
            scratch_args = argparse.Namespace(**{**vars(args), "max_steps": args.scratch_steps})
            result = run_one(preset, seed, scratch_args, 0, list(args.scratch_overrides))
            result["extra"] = ["(from scratch)", *args.scratch_overrides]
            results.append(result)
            raw.write_text(json.dumps(results, indent=1))
    print(table(results, args.target))
    print(f"raw results: {raw}")
    if not args.no_doc:
        write_doc(results, args, plot(results, out_dir))
    if any(math.isnan(r["final_exact_match"]) for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
