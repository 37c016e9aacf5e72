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

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from alignkit.config import RewardConfig, save_config
from alignkit.data.formats import load_dataset
from alignkit.data.tokenize import TokenizeReport, encode_completions, fit_prompt_completions
from alignkit.errors import AlignkitError
from alignkit.losses.reward import accuracy_by_strength, bradley_terry_loss, pair_metrics, pairwise_calibration_error
from alignkit.models.load import count_parameters, load_tokenizer
from alignkit.models.logprobs import final_hidden_states
from alignkit.models.wrapping import unwrap
from alignkit.models.reward import CONFIG_KEY, ENSEMBLE_FILE, load_reward_backbone, score_head
from alignkit.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from alignkit.train.loop import BatchStream, MetricsLogger, NanGuard, Throughput, build_optimizer, build_scheduler, global_sum, log, make_accelerator, split_holdout, total_optimizer_steps
from alignkit.io import atomic_directory, write_json
from alignkit.models.wrapping import strip_wrappers
from alignkit.models.sequences import collate_sequences, supports_shared_prompt

PREFERENCE_HINT = ("; a reward model learns from pairs: give each prompt a `chosen` and a `rejected` response "
                   "(rows with prompt, completion and label go to `alignkit kto`)")


# ---------------------------------------------------------------- data

@dataclass
class PairReport(TokenizeReport):
    """TokenizeReport with a count per reason (identical pairs, empty responses, too long)."""

    counts: dict = field(default_factory=dict)

    def note(self, reason: str, number: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        super().note(reason, number)

    def summary(self, source: str = "data") -> str:
        text = f"{source}: {self.kept}/{self.rows} pairs kept, {self.truncated} truncated, {self.dropped} dropped"
        for reason, count in self.counts.items():
            rows = self.examples[reason]
            text += f"; {reason}: {count} (rows {', '.join(map(str, rows))}{'...' if count > len(rows) else ''})"
        return text

    def as_dict(self) -> dict:
        return {**super().as_dict(), "reasons": dict(self.counts)}


def _is_empty(response) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return all(not str(m.get("content", "")).strip() for m in response)


def screen_pair(row: dict, number: int, config: RewardConfig, source: str, report: PairReport) -> bool:
    """Whether to keep a pair, by `identical_pairs` and `empty_responses`; every case is counted in `report`."""
    checks = (("identical_pairs", row["chosen"] == row["rejected"], "chosen identical to rejected"),
              ("empty_responses", _is_empty(row["chosen"]) or _is_empty(row["rejected"]), "empty response"))
    for key, failed, what in checks:
        if not failed:
            continue
        action = getattr(config, key)
        if action == "error":
            raise AlignkitError(f"{source} row {number}: {what}; fix the row, or set `{key}: drop` (or keep) to continue")
        report.note(f"{what} ({'dropped' if action == 'drop' else 'kept'})", number)
        if action == "drop":
            report.dropped += 1
            return False
    return True


def tokenize_pairs(numbered_rows: list[tuple[int, dict]], tokenizer, config: RewardConfig, source: str) -> tuple[list[dict], PairReport]:
    """Examples {"prompt_ids", "chosen_ids", "rejected_ids", "margin", "strength", "row"} and what happened to each row.

    Each prompt + response must fit `max_length` (as its own sequence); longer pairs
    have their prompt cut (`truncation_side`), then the responses, or are dropped
    (`truncation_mode: drop`).
    """
    report = PairReport(rows=len(numbered_rows))
    examples = []
    for number, row in numbered_rows:
        if not screen_pair(row, number, config, source, report):
            continue
        prompt_ids, (chosen, rejected) = encode_completions(tokenizer, row["prompt"], [row["chosen"], row["rejected"]])
        if len(prompt_ids) + max(len(chosen), len(rejected)) > config.max_length:
            if config.truncation_mode == "drop":
                report.dropped += 1
                report.note(f"longer than max_length={config.max_length} (dropped)", number)
                continue
            prompt_ids, (chosen, rejected), _ = fit_prompt_completions(prompt_ids, [chosen, rejected], config.max_length, config.truncation_side)
            report.truncated += 1
            report.note(f"longer than max_length={config.max_length} (truncated)", number)
        examples.append({"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected, "row": number,
                         "margin": row.get("margin", 0.0) if config.use_margin else 0.0, "strength": row.get("strength")})
    report.kept = len(examples)
    return examples, report


def load_reward_data(config: RewardConfig, tokenizer):
    """Tokenized train and held-out pairs, with their reports."""
    if not config.data:
        raise AlignkitError("no training data: set `data:` in the config or pass --data FILE (preference rows: prompt, chosen, rejected)")
    rows, fmt = load_dataset(config.data, ("preference",), "reward modeling", config.data_split, hint=PREFERENCE_HINT)
    numbered = list(enumerate(rows, start=1))
    if config.eval_data:
        eval_rows, _ = load_dataset(config.eval_data, ("preference",), "reward modeling evaluation", "test", hint=PREFERENCE_HINT)
        eval_numbered, eval_source = list(enumerate(eval_rows, start=1)), config.eval_data
    else:
        numbered, eval_numbered = split_holdout(numbered, config.eval_fraction, config.seed)
        eval_source = f"{config.data} (held out)"
    train, report = tokenize_pairs(numbered, tokenizer, config, config.data)
    held_out, eval_report = tokenize_pairs(eval_numbered, tokenizer, config, eval_source) if eval_numbered else ([], None)
    log.info(report.summary(f"{config.data} ({fmt})"))
    if eval_report:
        log.info(eval_report.summary(eval_source))
    if not train:
        raise AlignkitError(f"{config.data}: no training pairs are left; see the report above")
    return train, held_out, report, eval_report


# ---------------------------------------------------------------- rewards of pairs, one forward pass

def collate_pairs(examples: list[dict], pad_id: int, share_prompt: bool = True) -> dict[str, torch.Tensor]:
    """A batch of B pairs for `pair_rewards`, in either layout of `models.sequences`.

    share_prompt: one row per pair, prompt + chosen + rejected, where the rejected tokens
    cannot see the chosen ones and restart their positions after the prompt, so each
    response reads exactly what it would read alone and the prompt is computed once.
    Otherwise 2B right-padded rows (chosen rows, then rejected rows).

    Adds chosen_end and rejected_end (B,): each response's last token (its EOS, where the
    reward is read) as a flat index into the (rows * T) positions; margin (B,); and
    num_tokens, the real tokens of the 2B prompt+response sequences (the prompt counted
    twice, as separate sequences would have it).
    """
    sequences = [{"sequences": [(e["prompt_ids"], e["chosen_ids"]), (e["prompt_ids"], e["rejected_ids"])]} for e in examples]
    batch = collate_sequences(sequences, (0, 1), pad_id, share_prompt)
    width, n = batch["input_ids"].shape[1], len(examples)
    p, c, r = (torch.tensor([len(e[k]) for e in examples]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    rows = torch.arange(n)
    if share_prompt:
        batch["chosen_end"], batch["rejected_end"] = rows * width + p + c - 1, rows * width + p + c + r - 1
    else:
        batch["chosen_end"], batch["rejected_end"] = rows * width + p + c - 1, (n + rows) * width + p + r - 1
    batch["margin"] = torch.tensor([float(e.get("margin") or 0.0) for e in examples])
    batch["num_tokens"] = (2 * p + c + r).sum()
    return batch


def pair_rewards(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards (B,), (B,) of the chosen and rejected responses of a `collate_pairs` batch, in one forward pass.

    The forward goes through the top-level model (so DDP sees it); the scalar head reads
    the final hidden state at each response's last token.
    """
    mask = batch["attention_mask"]
    if mask.ndim == 4 and getattr(unwrap(model).config, "_attn_implementation", "eager") != "sdpa":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    hidden = final_hidden_states(model, batch["input_ids"], mask, batch.get("position_ids")).flatten(0, 1)  # (rows * T, H)
    ends = torch.cat([batch["chosen_end"], batch["rejected_end"]])  # (2B,)
    return score_head(model, hidden[ends]).chunk(2)


# ---------------------------------------------------------------- rewards and metrics

def batch_loss(model, batch: dict, config: RewardConfig, num_pairs, world_size: int = 1):
    """BT loss of one micro-batch, divided by the pair count of the whole step; also its (B,) rewards."""
    chosen, rejected = pair_rewards(model, batch)
    loss, _ = bradley_terry_loss(chosen, rejected, batch["margin"], config.center_rewards_coefficient, config.label_smoothing, num_pairs)
    return loss * world_size, chosen.detach(), rejected.detach()  # DDP averages gradients over ranks; the pair sum must not be


def train_step(accelerator, model, optimizer, scheduler, micro_batches: list[dict], config: RewardConfig, step: int, nan_guard) -> dict:
    """One optimizer step over this process's micro-batches; the loss divides by the whole step's pair count."""
    num_pairs = global_sum(accelerator, torch.tensor(float(sum(len(b["margin"]) for b in micro_batches)), device=accelerator.device))
    step_loss, chosen, rejected = torch.zeros((), device=accelerator.device), [], []
    for index, batch in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        sync = index == len(micro_batches) - 1
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
            loss, c, r = batch_loss(model, batch, config, num_pairs, accelerator.num_processes)
            accelerator.backward(loss)
        step_loss += loss.detach() / accelerator.num_processes
        chosen.append(c)
        rejected.append(r)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
    if not nan_guard.should_skip(accelerator, step, step_loss, grad_norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {"loss": global_sum(accelerator, step_loss).item(), **{k: v.item() for k, v in pair_metrics(torch.cat(chosen), torch.cat(rejected)).items()},
               "lr": scheduler.get_last_lr()[0], "pairs": int(num_pairs),
               "tokens": int(global_sum(accelerator, sum(b["num_tokens"] for b in micro_batches).to(accelerator.device)))}
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
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
    started = time.time()
    accelerator = make_accelerator(config)  # seeds, so the head initialisation follows config.seed
    model, tokenizer = load_reward_backbone(config)
    share_prompt = config.share_prompt and supports_shared_prompt(model)
    steps = total_optimizer_steps(len(train), config, accelerator.num_processes)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    lengths = [len(e["prompt_ids"]) + len(e["chosen_ids"]) + len(e["rejected_ids"]) for e in train] if config.group_by_length else None
    stream = BatchStream(len(train), config.batch_size, config.seed, accelerator.process_index, accelerator.num_processes, lengths)
    start_step = 0
    if checkpoint := resolve_resume(config.resume, log_dir):
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, stream)["step"]
        log.info(f"{desc}: resumed from {checkpoint} at step {start_step}")
    logger = MetricsLogger(log_dir, config.report_to, accelerator.is_main_process, resume_step=start_step)
    throughput, nan_guard, pad_id, pairs_seen = Throughput(), NanGuard(config.max_nan_steps), tokenizer.pad_token_id, 0
    trainable, total = count_parameters(model)
    log.info(f"{desc}: {len(train)} pairs, {steps} steps, {trainable:,}/{total:,} trainable parameters, "
             f"{'shared-prompt rows' if share_prompt else 'chosen and rejected rows'}")

    model.train()
    history = []
    progress = tqdm(range(start_step + 1, steps + 1), desc=desc, disable=not accelerator.is_local_main_process, mininterval=5)
    for step in progress:
        throughput.start()
        rows = stream.next_step(config.grad_accum_steps)
        metrics = train_step(accelerator, model, optimizer, scheduler, [collate_pairs([train[i] for i in r], pad_id, share_prompt) for r in rows],
                             config, step, nan_guard)
        tokens_per_s, pairs = throughput.stop(metrics.pop("tokens")), metrics.pop("pairs")
        pairs_seen += pairs
        metrics.update({"epoch": stream.fractional_epoch, "throughput/tokens_per_s": tokens_per_s,
                        "throughput/pairs_per_s": pairs / throughput.last_seconds, "step_seconds": throughput.last_seconds,
                        "nan_skipped": nan_guard.skipped})
        if held_out and config.eval_every and step % config.eval_every == 0 and step != steps:
            metrics.update(held_out_metrics(*rewards_of(model, held_out, pad_id, config.batch_size, accelerator, share_prompt), held_out, config))
        if step % config.logging_every == 0 or step == steps:
            logger.log(step, metrics)
        history.append(metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['rewards/accuracy']:.2f}", tok_s=f"{tokens_per_s:.0f}")
        if config.save_every and step % config.save_every == 0 and step != steps:
            save_checkpoint(log_dir, step, accelerator, model, optimizer, scheduler, stream, save_total_limit=config.save_total_limit)

    result = evaluate_and_save(model, tokenizer, accelerator, config, held_out, stats_examples, model_dir, share_prompt, logger, steps)
    logger.close()
    result["summary"] = {"model": str(model_dir), "seed": config.seed, "steps": steps, "train_pairs": len(train),
                         "first_loss": history[0]["loss"] if history else None, "final_loss": history[-1]["loss"] if history else None,
                         "nan_skipped": nan_guard.skipped, **result["summary"],
                         "tokens_per_s": throughput.mean, "pairs_per_s": pairs_seen / max(throughput.seconds, 1e-9),
                         "seconds": time.time() - started}
    accelerator.free_memory()
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
        import copy

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
    tokenizer = load_tokenizer(config.model, config.trust_remote_code)
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
        log.info(format_summary(summary))
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
    from alignkit.config import config_from_dict

    if isinstance(config, RewardConfig):
        values = {**asdict(config), **overrides}
    else:
        values = {**(config or {}), **overrides}
    return train_reward(config_from_dict(RewardConfig, values, "reward config"))
