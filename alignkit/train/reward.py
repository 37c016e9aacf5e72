"""Stage 2, reward modeling: a scalar score r(x, y) such that sigmoid(r(x, y_w) - r(x, y_l)) = P(y_w preferred).

config -> data (screen, tokenize, report) -> for each ensemble member: setup (model with a
scalar head, optimizer, bootstrap resample) -> loop (accumulate, clip, step, log, eval)
-> training-reward statistics -> save -> (ensemble) ensemble.json and ensemble metrics.

The loss is Bradley-Terry (`losses.reward.bradley_terry_loss`). Chosen and rejected go
through one forward pass: by default each pair is one row, prompt + chosen + rejected,
with the prompt computed once (`collate_pairs`, on the layouts of `models.sequences`). Held-out metrics are
accuracy, mean margin, the expected calibration error of sigmoid(r_c - r_r) and, when
the data has a `strength` column, accuracy per strength.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from alignkit.config import RewardConfig, config_with_overrides, save_config
from alignkit.data.pairs import load_reward_data
from alignkit.io import atomic_directory, write_json
from alignkit.losses.reward import accuracy_by_strength, bradley_terry_loss, pair_metrics, pairwise_calibration_error
from alignkit.models.load import count_parameters, load_tokenizer
from alignkit.models.reward import CONFIG_KEY, ENSEMBLE_FILE, collate_pairs, load_reward_backbone, pair_rewards
from alignkit.models.sequences import supports_shared_prompt
from alignkit.models.wrapping import strip_wrappers
from alignkit.train.hub import push_to_hub
from alignkit.train.loop import BatchStream, global_sum, log
from alignkit.train.model_card import write_model_cards
from alignkit.train.run import (
    build_training, checkpoint, due, first_and_last_loss, log_step, optimizer_step, resume, Run, start_run, step_timing,
    steps_left,
)


def reward_step(run: Run, model, optimizer, scheduler, micro_batches: list[dict], step: int) -> dict:
    """One optimizer step; each micro-batch's Bradley-Terry loss divides by the whole step's pair count."""
    accelerator, config = run.accelerator, run.config
    num_pairs = global_sum(accelerator, torch.tensor(float(sum(len(b["margin"]) for b in micro_batches)), device=accelerator.device))

    def micro_loss(batch):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        chosen, rejected = pair_rewards(model, batch)
        loss, _ = bradley_terry_loss(chosen, rejected, batch["margin"], config.center_rewards_coefficient, config.label_smoothing, num_pairs)
        return loss, (chosen.detach(), rejected.detach())

    result = optimizer_step(run, model, optimizer, scheduler, micro_batches, micro_loss, step)
    step_loss = torch.zeros((), device=accelerator.device)
    for loss in result.losses:
        step_loss += loss
    chosen, rejected = (torch.cat(side) for side in zip(*result.outputs))
    metrics = {"loss": global_sum(accelerator, step_loss).item(), **{k: v.item() for k, v in pair_metrics(chosen, rejected).items()},
               "lr": scheduler.get_last_lr()[0], "pairs": int(num_pairs),
               "tokens": int(global_sum(accelerator, sum(b["num_tokens"] for b in micro_batches).to(accelerator.device)))}
    if result.grad_norm is not None:
        metrics["grad_norm"] = float(result.grad_norm)
    return metrics


@torch.no_grad()
def rewards_of(model, examples: list[dict], pad_id: int, batch_size: int, accelerator, share_prompt: bool,
               desc: str = "held-out") -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected rewards (N,), (N,) of every example, in order; batches are length-sorted, each process scores a share."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -(len(examples[i]["prompt_ids"]) + len(examples[i]["chosen_ids"]) + len(examples[i]["rejected_ids"])))
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)][accelerator.process_index::accelerator.num_processes]
    scored = []
    for chunk in tqdm(chunks, desc=desc, disable=not accelerator.is_local_main_process, mininterval=5, leave=False):
        batch = {k: v.to(accelerator.device) for k, v in collate_pairs([examples[i] for i in chunk], pad_id, share_prompt).items()}
        with accelerator.autocast():
            chosen, rejected = pair_rewards(model, batch)
        scored += list(zip(chunk, chosen.tolist(), rejected.tolist()))
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        scored = gather_object(scored)
    model.train()
    scored.sort()
    return torch.tensor([s[1] for s in scored]), torch.tensor([s[2] for s in scored])


def held_out_metrics(chosen: torch.Tensor, rejected: torch.Tensor, examples: list[dict], config: RewardConfig, prefix: str = "eval/") -> dict:
    """Loss, accuracy, mean margin, ECE (10 bins) and, with a `strength` column, accuracy per strength."""
    margin = torch.tensor([e["margin"] for e in examples], dtype=torch.float32)
    loss, _ = bradley_terry_loss(chosen, rejected, margin, config.center_rewards_coefficient, config.label_smoothing)
    metrics = {"loss": loss.item(), **{k: v.item() for k, v in pair_metrics(chosen, rejected).items()},
               "calibration/ece": pairwise_calibration_error(chosen, rejected, num_bins=10).item()}
    if examples and all(e["strength"] is not None for e in examples):
        strength = torch.tensor([e["strength"] for e in examples], dtype=torch.float32)
        for label, (accuracy, count) in accuracy_by_strength(chosen, rejected, strength).items():
            metrics[f"accuracy_by_strength/{label}"] = accuracy
            metrics[f"pairs_by_strength/{label}"] = count
    return {prefix + k: v for k, v in metrics.items()}


def reward_stats(chosen: torch.Tensor, rejected: torch.Tensor, config: RewardConfig) -> dict:
    """Mean and std of the rewards of every training response (chosen and rejected), for normalisation downstream."""
    rewards = torch.cat([chosen, rejected])
    return {"mean": rewards.mean().item(), "std": rewards.std(unbiased=False).item(), "responses": len(rewards),
            "max_length": config.max_length, "truncation_side": config.truncation_side}


# ---------------------------------------------------------------- one reward model

def train_one(config: RewardConfig, train: list[dict], held_out: list[dict], stats_examples: list[dict],
              model_dir: Path, log_dir: Path, desc: str = "reward") -> dict:
    """Trains one reward model on `train`, saves it to `model_dir`; returns its summary and reward vectors."""
    run = start_run(config, "reward", output_dir=log_dir)  # seeds, so the head initialisation follows config.seed
    model, tokenizer = load_reward_backbone(config)
    share_prompt, pad_id = config.share_prompt and supports_shared_prompt(model), tokenizer.pad_token_id
    steps, model, optimizer, scheduler = build_training(run, model, len(train))
    lengths = [len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train] if config.group_by_length else None
    stream = BatchStream(len(train), config.batch_size, config.seed, run.accelerator.process_index, run.accelerator.num_processes, lengths)
    resume(run, model, optimizer, scheduler, stream)
    trainable, total = count_parameters(model)
    log.info(f"{desc}: {len(train)} pairs, {steps} steps, {trainable:,}/{total:,} trainable parameters, "
             f"{'shared-prompt rows' if share_prompt else 'chosen and rejected rows'}")

    model.train()
    pairs_seen = 0
    for step in (progress := steps_left(run, steps, desc, mininterval=5)):
        run.throughput.start()
        micro_batches = [collate_pairs([train[i] for i in rows], pad_id, share_prompt) for rows in stream.next_step(config.grad_accum_steps)]
        metrics = reward_step(run, model, optimizer, scheduler, micro_batches, step)
        timing, pairs = step_timing(run, metrics.pop("tokens")), metrics.pop("pairs")
        pairs_seen += pairs
        metrics.update({"epoch": stream.fractional_epoch, **timing, "throughput/pairs_per_s": pairs / run.throughput.last_seconds,
                        "nan_skipped": run.nan_guard.skipped})
        if held_out and due(config.eval_every, step, steps):
            metrics.update(held_out_metrics(*rewards_of(model, held_out, pad_id, config.batch_size, run.accelerator, share_prompt), held_out, config))
        log_step(run, step, steps, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}", tok_s=f"{timing['throughput/tokens_per_s']:.0f}")
        if due(config.save_every, step, steps):
            checkpoint(run, step, model, optimizer, scheduler, stream)

    result = evaluate_and_save(model, tokenizer, run.accelerator, config, held_out, stats_examples, model_dir, share_prompt, run.logger, steps)
    run.logger.close()
    result["summary"] = {"model": str(model_dir), "seed": config.seed, "steps": steps, "train_pairs": len(train), **first_and_last_loss(run),
                         "nan_skipped": run.nan_guard.skipped, **result["summary"], "tokens_per_s": run.throughput.mean,
                         "pairs_per_s": pairs_seen / max(run.throughput.seconds, 1e-9), "seconds": time.time() - run.started}
    run.accelerator.free_memory()
    return result


def evaluate_and_save(model, tokenizer, accelerator, config: RewardConfig, held_out: list[dict], stats_examples: list[dict],
                      model_dir: Path, share_prompt: bool, logger, step: int) -> dict:
    """Final held-out metrics, the training-reward statistics, and the saved model."""
    pad_id = tokenizer.pad_token_id
    eval_rewards = rewards_of(model, held_out, pad_id, config.batch_size, accelerator, share_prompt) if held_out else None
    final_eval = held_out_metrics(*eval_rewards, held_out, config) if held_out else {}
    if final_eval:
        logger.log(step, final_eval)
    train_rewards = rewards_of(model, stats_examples, pad_id, config.batch_size, accelerator, share_prompt, "training-reward statistics")
    stats = reward_stats(*train_rewards, config)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_reward_model(accelerator.unwrap_model(model), tokenizer, model_dir, stats)
    summary = {**final_eval, "normalization": {"mean": stats["mean"], "std": stats["std"]}}
    return {"summary": summary, "train_rewards": train_rewards, "eval_rewards": eval_rewards}


def save_reward_model(model, tokenizer, path: str | Path, stats: dict) -> Path:
    """Writes a plain HF sequence-classification directory (LoRA merged) with `stats` in config.json."""
    model = unwrap_for_save(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    setattr(model.config, CONFIG_KEY, stats)  # config.json: alignkit_reward
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(path)


def unwrap_for_save(model):
    """The plain transformers model: DDP/compile wrappers removed, a LoRA adapter merged into a copy."""
    model = strip_wrappers(model)
    if hasattr(model, "peft_config"):
        model = copy.deepcopy(model).merge_and_unload()
    return model


# ---------------------------------------------------------------- the stage

def bootstrap(examples: list[dict], seed: int) -> list[dict]:
    """A resample of `examples` with replacement, of the same size (seeded)."""
    picks = torch.randint(len(examples), (len(examples),), generator=torch.Generator().manual_seed(seed))
    return [examples[i] for i in picks.tolist()]


def normalization_sample(train: list[dict], config: RewardConfig) -> list[dict]:
    """The training pairs whose rewards give the saved mean/std: all, or a seeded sample of `normalization_pairs`."""
    if not config.normalization_pairs or config.normalization_pairs >= len(train):
        return train
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))[:config.normalization_pairs]
    return [train[i] for i in sorted(picks.tolist())]


def train_reward(config: RewardConfig) -> dict:
    """Trains a reward model (or an ensemble) end to end; returns the summary (also `<output_dir>/summary.json`)."""
    started = time.time()
    output_dir = Path(config.output_dir)
    tokenizer = load_tokenizer(config.model, config.trust_remote_code, config.chat_template, config.chat_template_path)
    train, held_out, report, eval_report = load_reward_data(config, tokenizer)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    common = {"stage": "reward", "train_pairs": len(train), "eval_pairs": len(held_out), "data": report.as_dict(),
              "eval_data": eval_report.as_dict() if eval_report else None}

    if config.ensemble == 1:
        result = train_one(config, train, held_out, normalization_sample(train, config), output_dir / "model", output_dir)
        summary = {**common, **result["summary"], "seconds": time.time() - started}
    else:
        summary = {**common, **train_ensemble(config, train, held_out, output_dir), "seconds": time.time() - started}
    if PartialState().is_main_process:
        write_json(output_dir / "summary.json", summary)
        members = [(output_dir / f"member-{i}", "model") for i in range(config.ensemble)] if config.ensemble > 1 else None
        write_model_cards(config, "reward", summary, output_dir, [(output_dir, "model"), *members] if members else None)
        log.info(format_summary(summary))
        if config.push_to_hub:  # an ensemble: its card and ensemble.json at the repo root, member-i/ beside them
            push_to_hub(config, output_dir, [(output_dir, "", ["README.md", ENSEMBLE_FILE, "member-*"])] if members else None)
    return summary


def train_ensemble(config: RewardConfig, train: list[dict], held_out: list[dict], output_dir: Path) -> dict:
    """K members (seed + i, each on its own bootstrap resample) into member-i/, then ensemble.json and ensemble metrics."""
    (output_dir / ENSEMBLE_FILE).unlink(missing_ok=True)  # the directory is an ensemble again only once every member is saved
    results, stats_examples = [], normalization_sample(train, config)  # the same responses for every member
    for i in range(config.ensemble):
        member = RewardConfig(**{**asdict(config), "seed": config.seed + i})
        member_train = bootstrap(train, member.seed) if config.bootstrap else train
        results.append(train_one(member, member_train, held_out, stats_examples, output_dir / f"member-{i}",
                                 output_dir / "logs" / f"member-{i}", desc=f"reward member {i + 1}/{config.ensemble}"))
    means = [r["summary"]["normalization"]["mean"] for r in results]
    offsets = [m - sum(means) / len(means) for m in means]  # the same alignment RewardModel.score applies
    aligned = torch.stack([torch.cat(r["train_rewards"]) - o for r, o in zip(results, offsets)])  # (K, 2N)
    ensemble_mean = aligned.mean(0)
    spec = {"members": [{"path": f"member-{i}", "seed": r["summary"]["seed"], **r["summary"]["normalization"]} for i, r in enumerate(results)],
            "k": config.conservative_k, "alignment": "each member shifted by (its training mean - the members' average)",
            "normalization": {"mean": ensemble_mean.mean().item(), "std": ensemble_mean.std(unbiased=False).item()}}
    summary = {"model": str(output_dir), "members": [r["summary"] for r in results], "normalization": spec["normalization"]}
    if held_out:
        chosen = torch.stack([r["eval_rewards"][0] - o for r, o in zip(results, offsets)])  # (K, N)
        rejected = torch.stack([r["eval_rewards"][1] - o for r, o in zip(results, offsets)])
        summary.update(held_out_metrics(chosen.mean(0), rejected.mean(0), held_out, config))
        summary["eval/ensemble_std"] = torch.cat([chosen.std(0, unbiased=False), rejected.std(0, unbiased=False)]).mean().item()
    if PartialState().is_main_process:
        write_json(output_dir / ENSEMBLE_FILE, spec)
    summary["tokens_per_s"] = sum(r["summary"]["tokens_per_s"] for r in results) / len(results)
    return summary


def format_summary(summary: dict) -> str:
    data = summary["data"]
    members = f" ensemble of {len(summary['members'])}," if "members" in summary else ""
    lines = [f"reward modeling done in {summary['seconds']:.0f}s:{members} {summary['train_pairs']} training pairs "
             f"({data['truncated']} truncated, {data['dropped']} dropped), {summary['tokens_per_s']:.0f} tokens/s"]
    if summary.get("final_loss") is not None:
        lines.append(f"  train loss {summary['first_loss']:.3f} -> {summary['final_loss']:.3f}")
    if summary.get("nan_skipped"):
        lines.append(f"  {summary['nan_skipped']} steps skipped for NaN/inf loss or gradients")
    if "eval/rewards/accuracy" in summary:
        lines.append(f"  held-out ({summary['eval_pairs']} pairs): accuracy {summary['eval/rewards/accuracy']:.3f}, "
                     f"mean margin {summary['eval/rewards/margin']:.3f}, ECE {summary['eval/calibration/ece']:.3f}, loss {summary['eval/loss']:.3f}")
        strengths = {k.split("/")[-1]: v for k, v in summary.items() if k.startswith("eval/accuracy_by_strength/")}
        if strengths:
            lines.append("  accuracy by strength: " + ", ".join(f"{k}: {v:.3f} ({summary['eval/pairs_by_strength/' + k]})" for k, v in strengths.items()))
    if "eval/ensemble_std" in summary:
        lines.append(f"  mean member std on held-out responses {summary['eval/ensemble_std']:.3f}")
    norm = summary["normalization"]
    lines.append(f"  training rewards mean {norm['mean']:.3f}, std {norm['std']:.3f}; saved to {summary['model']}")
    return "\n".join(lines)


def reward(config: RewardConfig | dict | None = None, **overrides) -> dict:
    """Python entry point: `alignkit.train.reward({"model": ..., "data": ...})` or with keyword overrides."""
    return train_reward(config_with_overrides(RewardConfig, config, overrides, "reward config"))
