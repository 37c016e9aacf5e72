"""Configuration: one dataclass per command, loaded from YAML plus `--key value` overrides.

Every field carries its own help text (`metadata["help"]`); unknown keys are errors that
suggest the closest valid key, so a typo never silently falls back to a default. A field
shared by several commands is declared once, in a small mixin (`DataArgs`, `LoRASaveArgs`,
`MonitorArgs`, ...); a command re-declares it only where its default or help differs.
Choices that name a table of variants (losses, estimators, controllers) are read from it.
The loading machinery (`option`, `load_config`, `config_from_dict`, ...) lives in
`alignkit.config_loader` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass


from alignkit.config_loader import (  # noqa: F401  (re-exported: callers import the machinery from alignkit.config)
    _coerce, choose, config_from_dict, config_with_overrides, field_help, load_config, option, parse_overrides, read_yaml, save_config, to_dict,
)
from alignkit.config_checks import check_hub_options, check_trackers
from alignkit.errors import AlignkitError
from alignkit.data.tokenize import CHAT_TEMPLATE_MODES, read_chat_template
from alignkit.io import check_output_dir
from alignkit.losses.kl import KL_ESTIMATORS
from alignkit.models.precision import MIXED_PRECISION, resolve_mixed_precision
from alignkit.losses.policy import AGGREGATIONS, POLICY_LOSSES
from alignkit.losses.preference import PREFERENCE_LOSSES
from alignkit.rl.reward_specs import check_reward_specs
from alignkit.rl.advantages import ESTIMATORS, NEEDS_GROUPS
from alignkit.rl.kl_control import KL_CONTROLLERS
from alignkit.rl.mismatch import IS_MODES


@dataclass
class ModelArgs:
    """How the trained model is loaded: shared by every training stage."""

    model: str = option("smollm2-135m-instruct", "Hugging Face directory, hub id, run directory or alias (smollm2-135m-instruct, tiny-llama).")
    dtype: str = option("float32", "Weights dtype: float32 (with bf16 autocast, the fast choice on CPU) or bfloat16.")
    mixed_precision: str = option("auto", "Autocast: auto (bf16 where the hardware computes it natively: CUDA GPUs from Ampere on, CPUs with "
                                  "AVX-512 BF16 or AMX; else float32), bf16 or no. Native bf16 is ~3x faster than float32 on CPU; emulated, ~100x slower.")
    trust_remote_code: bool = option(False, "Run model code shipped with a hub model. Off unless you trust the source.")
    allow_unsafe_pickle: bool = option(False, "Load pickle-based weights (.bin/.pt), which can run code when loaded. Off: only safetensors.")
    gradient_checkpointing: bool = option(False, "Recompute activations in backward to save memory.")
    lora_r: int = option(0, "LoRA rank; 0 trains all weights.", ge=0, range_text="0 (full fine-tuning) or a positive rank")
    lora_alpha: int = option(32, "LoRA scaling numerator (scale = lora_alpha / lora_r).", ge=1)
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    target_modules: list = option(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Module names LoRA adapts.")
    chat_template: str = option("auto", "Which rows go through the tokenizer's chat template: auto (TRL's rule: conversational rows, "
                                "i.e. lists of messages, do; standard string rows stay raw text, EOS appended), always (string rows "
                                "become a user turn and an assistant turn too) or never (raw text only; conversational rows are refused).")
    chat_template_path: str = option("", "A Jinja chat template file (or a folder holding chat_template.jinja) that replaces the "
                                     "tokenizer's own; it is saved with the trained model.")

    def validate(self) -> None:
        """The model settings every stage that loads a model checks (training, sampling, iterate); `auto` is resolved here."""
        choose(self, "mixed_precision", MIXED_PRECISION)
        self.mixed_precision = resolve_mixed_precision(self.mixed_precision)
        choose(self, "dtype", ("float32", "bfloat16"))
        choose(self, "chat_template", CHAT_TEMPLATE_MODES)
        if self.chat_template_path:
            read_chat_template(self.chat_template_path)  # a missing file or a Jinja syntax error fails here, before any model loads


@dataclass
class TrainArgs(ModelArgs):
    """The optimisation loop shared by every training stage."""

    output_dir: str = option("runs/sft", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    seed: int = option(0, "Seed for data order, initialisation and sampling.", ge=0, lt=2**32, why="numpy and accelerate seed with a 32-bit unsigned number")
    learning_rate: float = option(2e-5, "Peak AdamW learning rate.", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay (not applied to biases and norms).", ge=0)
    adam_betas: list = option([0.9, 0.999], "AdamW betas.", length=2, items=dict(ge=0, lt=1), why="AdamW beta1 and beta2: the decay rates of the moment averages")
    lr_scheduler: str = option("cosine", "linear, cosine or constant (each after warmup).")
    warmup_ratio: float = option(0.05, "Fraction of optimizer steps spent warming up.", ge=0, lt=1, why="a fraction of the optimizer steps")
    num_epochs: float = option(1.0, "Passes over the training data (fractions allowed).", gt=0)
    max_steps: int = option(-1, "Stop after this many optimizer steps; -1 uses num_epochs.", ge=1, allow=(-1,), range_text="-1 (use num_epochs) or a positive count of optimizer steps")
    batch_size: int = option(8, "Rows per micro-batch (per process).", ge=1)
    grad_accum_steps: int = option(1, "Micro-batches per optimizer step.", ge=1)
    max_grad_norm: float = option(1.0, "Gradient clipping norm; 0 disables.", ge=0, range_text="0 (no clipping) or positive")
    max_length: int = option(512, "Longest tokenized row; longer rows are truncated or dropped (see truncation_mode).", ge=1)
    truncation_side: str = option("left", "Which end of the prompt is cut when a row is too long: left keeps the prompt's end.")
    truncation_mode: str = option("truncate", "Rows longer than max_length: truncate (keep the completion, cut the prompt) or drop.")
    eval_every: int = option(0, "Evaluate on the held-out split every N optimizer steps (0: only at the end).", ge=0, range_text="0 (only at the end) or a positive number of steps")
    save_every: int = option(0, "Write a checkpoint every N optimizer steps (0: only the final model).", ge=0, range_text="0 (only the final model) or a positive number of steps")
    logging_every: int = option(1, "Log metrics every N optimizer steps.", ge=1)
    report_to: list = option(["jsonl", "tensorboard"], "Experiment trackers besides metrics.jsonl (always written): tensorboard "
                             "(<output_dir>/tensorboard), wandb, trackio, mlflow, or any other tracker accelerate knows (comet_ml, aim, "
                             "clearml, dvclive, swanlab); jsonl names alignkit's own log.")
    tracker_project: str = option("alignkit", "Project the trackers log under (W&B and trackio project, MLflow experiment); "
                                  "the run is named after output_dir.")
    push_to_hub: bool = option(False, "After the final save, upload model/ (and adapter/ as its adapter/ subfolder) with its model "
                               "card to the Hugging Face Hub repo hub_model_id; the token comes from $HF_TOKEN.")
    hub_model_id: str = option("", "The Hub repo to push to, `owner/name` (created if missing).")
    hub_private: bool = option(True, "Create the Hub repo as private (an existing repo keeps its visibility).")
    hub_token: str = option("", "Never set here: the Hub token is read from the HF_TOKEN environment variable only.")
    resume: str = option("", "Continue a run: `auto` (the newest checkpoint in output_dir, if any) or a checkpoint-N folder.")
    resume_override: list = option([], "Keys a resumed run may change from its checkpoint's config (e.g. [learning_rate]); "
                                       "any other change that breaks exactness is refused.")
    save_total_limit: int = option(0, "Keep only the newest N checkpoints (0 keeps all).", ge=0, range_text="0 (keep all) or a positive count")
    max_nan_steps: int = option(5, "Stop after this many consecutive steps with a NaN/inf loss or gradient (each is skipped).", ge=1)

    def validate(self) -> None:
        super().validate()
        choose(self, "lr_scheduler", ("linear", "cosine", "constant"))
        choose(self, "truncation_side", ("left", "right"))
        choose(self, "truncation_mode", ("truncate", "drop"))
        check_output_dir(self.output_dir)
        check_trackers(self.report_to)  # an unknown or uninstalled tracker fails here, before any model loads
        check_hub_options(self)
        # single-key ranges are declared on the fields (option(ge=..., ...)) and checked by config_from_dict


@dataclass
class DataArgs:
    """Where a stage's training and held-out rows come from."""

    data: str = option("", "Training data: file (jsonl/json/parquet/csv), datasets directory or hub id.")
    data_split: str = option("train", "Split to read from a datasets directory or hub id.")
    eval_data: str = option("", "Held-out data; empty splits eval_fraction off the training data.")


@dataclass
class HoldoutDataArgs(DataArgs):
    """DataArgs plus a held-out share split off the training rows when there is no eval_data."""

    eval_fraction: float = option(0.05, "Share of training rows held out when eval_data is empty.", ge=0, lt=1)


@dataclass
class LoRASaveArgs:
    """Saving a LoRA run: the adapter, and the model with it merged in."""

    merge_lora: bool = option(True, "With LoRA, also save the adapter merged into the base as <output_dir>/model.")


@dataclass
class PackingArgs:
    """Padding-free batches (SFT); dpo/kto declare it only to refuse it with the reason."""

    packing: bool = option(False, "Padding-free batches: each micro-batch's rows concatenated into one, with restarting positions.")


@dataclass
class MonitorConfig:
    """The `monitor:` mapping of a PPO / GRPO / DPO config (alignkit.evaluate.monitors)."""

    every: int = option(0, "Held-out check every N steps: sample answers, score proxy / gold / judge, KL (0: off).", ge=0, range_text="0 (off) or a positive number of steps")
    prompts: str = option("", "Held-out prompts (rows with a `prompt` column); empty uses the stage's eval_data.")
    max_prompts: int = option(32, "Use the first N distinct held-out prompts (0: all).", ge=0, range_text="0 (all) or a positive count")
    max_new_tokens: int = option(0, "Answer length for the checks (0: the stage's max_new_tokens, else 48).", ge=0)
    temperature: float = option(1.0, "Sampling temperature of the check answers (KL is estimated on these samples).", gt=0, why="KL is estimated on these samples")
    proxy: str = option("", "Proxy reward for the checks: a reward-model directory or module:function; empty: the training reward (DPO: its implicit reward).")
    gold: str = option("", "Gold reward, module:function or hhh-mini-gold; empty: the stage's eval_reward_function, if any.")
    judge: str = option("", "Judge model (alias or directory): its win rate against the reference's answers is a held-out score.")
    constitution: str = option("", "The judge's constitution file; empty: configs/constitution.md.")
    kl_budget: float = option(0.0, "Alarm when KL(policy || reference) on the held-out prompts exceeds this, nats per answer (0: no budget).", ge=0, range_text="0 (no budget) or positive")
    gold_drop: float = option(0.05, "Alarm when held-out gold falls this far below its best check while the proxy has risen since.", ge=0)
    proxy_rise: float = option(0.0, "How much the proxy must have risen since gold's best check for the over-optimization alarm.", ge=0)
    patience: int = option(1, "Alarmed checks in a row before stopping (with stop_on_alarm).", ge=1)
    stop_on_alarm: bool = option(False, "Stop training after `patience` alarmed checks in a row.")
    keep_best: bool = option(True, "Save the check with the best held-out gold (else judge, else proxy) as <output_dir>/best.")
    hacking_every: int = option(1, "Reward-hacking alarms every N steps (on training batches for PPO/GRPO, on the checks for DPO); 0: off.", ge=0, range_text="0 (off) or a positive number of steps")
    length_corr_warn: float = option(0.5, "Warn when the reward-length correlation of a batch exceeds this.", ge=0, le=1, why="a correlation; 0 turns the warning off")
    length_corr_trend_warn: float = option(0.3, "Warn when that correlation rose by more than this over the last trend_window batches.", ge=0, le=2, why="a rise in correlation; 0 turns the warning off")
    trend_window: int = option(10, "Batches over which the correlation trend is measured.", ge=2, why="a trend needs two batches or more")
    repetition_warn: float = option(0.3, "Warn when the mean share of repeated 3-grams in an answer exceeds this.", ge=0, le=1, why="a share of repeated 3-grams; 0 turns the warning off")
    truncation_gain_warn: float = option(0.5, "Warn when answers outscore their own first part by more than this many reward stds.", ge=0)
    truncation_fraction: float = option(0.5, "The share of words kept in the truncated answer.", gt=0, lt=1)
    truncation_samples: int = option(8, "Answers per batch used for the truncation test.", ge=0)

    # every key's range is declared on its field; no cross-key rule


@dataclass
class MonitorArgs:
    """The over-optimization / reward-hacking monitor of DPO, PPO and GRPO, a nested `monitor:` section."""

    monitor: MonitorConfig | None = option(None, "Over-optimization / reward-hacking monitor settings (see MonitorConfig, alignkit.evaluate.monitors); empty: off.")


@dataclass
class SFTConfig(PackingArgs, LoRASaveArgs, HoldoutDataArgs, TrainArgs):
    """`alignkit sft`: supervised fine-tuning with loss only on responses."""


@dataclass
class DirectAlignmentArgs(PackingArgs, LoRASaveArgs, HoldoutDataArgs, TrainArgs):
    """What DPO and KTO share: data, the reference policy and its log-prob cache."""

    output_dir: str = option("runs/dpo", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    learning_rate: float = option(1e-6, "Peak AdamW learning rate (TRL's DPO default; LoRA wants ~10-100x more).")
    beta: float | None = option(None, "Strength of the pull toward the reference (must be > 0); empty uses the loss's default: 0.1, 2.0 for simpo.", gt=0, example=0.1, why="it scales the log-ratios; DPO's usual range is 0.01-0.5")
    reference: str = option("auto", "Reference policy: auto (adapter with LoRA, else copy), copy (a frozen copy), adapter (the LoRA base with adapters off), precompute (log-probs computed once and cached on disk).")
    reference_model: str = option("", "Reference model; empty uses the starting policy (`model`).")
    ref_cache_dir: str = option("", "Folder for precomputed reference log-probs (keyed by model weights and data); empty uses $ALIGNKIT_CACHE/reference_logps.")
    share_prompt: bool = option(True, "Run each prompt once for both of its completions (one row, a 4D attention mask); needs sdpa or eager attention.")

    def validate(self) -> None:
        super().validate()
        choose(self, "reference", ("auto", "copy", "adapter", "precompute"))
        if self.reference == "adapter" and self.lora_r == 0:
            raise AlignkitError("reference: adapter needs LoRA (set lora_r > 0); full fine-tuning uses reference: copy or precompute")
        if self.packing:
            raise AlignkitError("packing is not used by dpo/kto: share_prompt (on by default) already runs each prompt once "
                                "and drops the padding between a pair's completions; remove packing")


@dataclass
class DPOConfig(MonitorArgs, DirectAlignmentArgs):
    """`alignkit dpo`: direct preference optimization and its variants on (prompt, chosen, rejected) pairs."""

    loss: str = option("sigmoid", "sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO), simpo (reference-free), orpo (reference-free, adds NLL).")
    label_smoothing: float = option(0.0, "sigmoid: conservative DPO flip rate; robust: the assumed label-noise rate (< 0.5); simpo: smoothing.", ge=0, lt=0.5, why="a label-flip rate below one half")
    gamma_beta_ratio: float = option(0.5, "simpo: target margin gamma as a fraction of beta.", ge=0)
    rpo_alpha: float = option(0.0, "Add rpo_alpha x the chosen answer's mean token NLL to any loss (RPO; the paper uses 1.0): keeps chosen answers likely.", ge=0, range_text="0 (off) or positive", why="the weight of the chosen answers' NLL added to the loss")

    def validate(self) -> None:
        super().validate()
        choose(self, "loss", PREFERENCE_LOSSES)


@dataclass
class KTOConfig(DirectAlignmentArgs):
    """`alignkit kto`: Kahneman-Tversky optimization on unpaired (prompt, completion, label) rows."""

    output_dir: str = option("runs/kto", "Where checkpoints, the final model, metrics.jsonl and TensorBoard logs go.")
    learning_rate: float = option(1e-6, "Peak AdamW learning rate (TRL's KTO default; LoRA wants ~10-100x more).")
    beta: float | None = option(None, "Sharpness of the KTO value function (must be > 0); empty uses 0.1.")
    desirable_weight: float = option(1.0, "lambda_D, the weight of desirable rows; keep lambda_D*n_D / (lambda_U*n_U) in [1, 4/3].", gt=0)
    undesirable_weight: float = option(1.0, "lambda_U, the weight of undesirable rows.", gt=0)
    from_preference: bool = option(False, "Read (prompt, chosen, rejected) data as one desirable and one undesirable row per pair.")

    # desirable_weight and undesirable_weight: ranges declared on the fields


@dataclass
class PPOConfig(MonitorArgs, LoRASaveArgs, DataArgs, TrainArgs):
    """`alignkit ppo`: online policy optimisation (PPO with a value model by default; REINFORCE, RLOO, GRPO selectable)."""

    output_dir: str = option("runs/ppo", "Where the final model, metrics.jsonl and TensorBoard logs go.")
    data: str = option("", "Prompts (any rows with a `prompt` column; other columns are passed to reward functions).")
    eval_data: str = option("", "Held-out prompts, answered greedily and scored at the start, every eval_every steps and at the end.")
    eval_rows: int = option(0, "Use only the first N held-out prompts (0: all).", ge=0, range_text="0 (all) or a positive count")
    eval_reward_function: str = option("", "An extra judge for evaluation only, module:function or hhh-mini-gold (logged as eval/gold).")
    eval_samples: int = option(0, "Also score this many sampled answers per held-out prompt (rollout temperature and top-p; eval/sampled_*): "
                                  "the expected reward the policy optimises, less noisy than one greedy answer.", ge=0,
                              why="sampled answers scored per held-out prompt")
    learning_rate: float = option(1e-5, "Peak AdamW learning rate.")
    lr_scheduler: str = option("constant", "linear, cosine or constant (each after warmup).")
    warmup_ratio: float = option(0.0, "Fraction of optimizer steps spent warming up.")
    num_epochs: float = option(1.0, "Passes over the prompts (each step samples prompts_per_step of them).")
    max_steps: int = option(-1, "Stop after this many rollout steps; -1 uses num_epochs.")
    batch_size: int = option(8, "Responses per forward pass (micro-batch); a minibatch accumulates over several.")
    truncation_mode: str = option("drop", "Prompts longer than max_prompt_length: drop (counted and reported) or truncate (keep the end).")
    # rollout
    prompts_per_step: int = option(16, "Prompts sampled per rollout step.", ge=1)
    group_size: int = option(1, "Responses sampled per prompt (G); rloo and grpo need 2 or more.", ge=1)
    max_prompt_length: int = option(256, "Longest prompt in tokens (after the chat template).", ge=1)
    max_new_tokens: int = option(64, "Longest response; one that hits it without EOS is truncated (see missing_eos_penalty).", ge=1)
    temperature: float = option(1.0, "Sampling temperature; log-probs are computed at the same temperature.", gt=0)
    top_p: float = option(1.0, "Nucleus sampling threshold (1.0 samples from the whole distribution).", gt=0, le=1)
    generation_batch_size: int = option(0, "Sequences per generate call (0: the whole rollout at once).", ge=0, range_text="0 (the whole rollout) or a positive count")
    generation_backend: str = option("hf", "hf (transformers generate with KV cache) or vllm (CPU or GPU; `make vllm-setup`, see vllm_mode).")
    vllm_mode: str = option("colocate", "vllm: colocate (vLLM in the training process; run from .venv-vllm) or server "
                                        "(`alignkit vllm-serve` at vllm_server_url, on this machine or a shared disk).")
    vllm_server_url: str = option("http://127.0.0.1:8000", "vllm_mode server: the address of `alignkit vllm-serve`.")
    vllm_server_timeout: float = option(300.0, "vllm_mode server: seconds a generate or weight reload call may take.", gt=0)
    vllm_gpu_memory_utilization: float = option(0.3, "Share of GPU memory vLLM may take (generation_backend: vllm).", gt=0, le=1)
    vllm_sync_tolerance: float = option(0.05, "After each weight sync, the largest mean |log p_vllm - log p_trainer| over a probe "
                                              "sequence; beyond it the run stops (the sync failed or the engines disagree).", gt=0)
    vllm_importance_sampling_correction: bool = option(True, "vllm: weight each token's loss by the truncated ratio "
                                                             "pi_old / pi_vllm (rl/mismatch.py), as verl's TIS and TRL do.")
    vllm_importance_sampling_mode: str = option("token_truncate", "token_truncate, token_mask, sequence_truncate or sequence_mask.")
    vllm_importance_sampling_clip_min: float = option(0.0, "Lower bound of the importance ratio (truncate: clamp; mask: zero below).", ge=0, lt=1,
                                                      why="a ratio of 1 (no mismatch) must stay inside the bounds")
    vllm_importance_sampling_clip_max: float = option(3.0, "Upper bound of the importance ratio (truncate: clamp; mask: zero above).", ge=1,
                                                      why="a ratio of 1 (no mismatch) must stay inside the bounds")
    missing_eos_penalty: float = option(0.0, "Subtracted from the reward of a response that hit max_new_tokens without EOS.", ge=0)
    mask_truncated_completions: bool = option(False, "Leave responses without EOS out of the loss entirely (counted in response/masked).")
    overlong_buffer: int = option(0, "DAPO's overlong reward shaping: a response longer than max_new_tokens - overlong_buffer loses "
                                     "reward linearly, up to overlong_penalty at max_new_tokens (0: off).", ge=0)
    overlong_penalty: float = option(1.0, "The most overlong reward shaping subtracts (at max_new_tokens).", ge=0)
    dynamic_sampling: bool = option(False, "DAPO's dynamic sampling: groups whose rewards are all equal (no gradient) are "
                                           "dropped and refilled from fresh prompts (counted in dynamic/*).")
    dynamic_sampling_rounds: int = option(3, "Most extra generation rounds a step may spend refilling dropped groups.", ge=0)
    # rewards
    reward_model: str = option("", "A trained reward model or ensemble directory.")
    reward_function: str = option("", "A Python reward, module:function or path/file.py:function, called fn(prompts, responses, **columns); hhh-mini-gold is the hhh-mini judge.")
    reward_url: str = option("", "An HTTP reward endpoint: POST JSON {prompts, responses, ...columns} -> a list of numbers or {rewards: [...]}.")
    rewards: list = option([], "Several reward sources summed with weights: [{type: model|function|http, weight: 1.0, ...}] (see alignkit.rl.rewards).")
    reward_conservative_k: float = option(0.0, "With a reward-model ensemble, score mean - k * std (0: the mean).", ge=0)
    reward_normalize: bool = option(True, "Standardise rewards with running mean/std over every reward seen so far.")
    reward_clip: float = option(0.0, "Clip the (normalised) reward to [-c, c]; 0 disables.", ge=0, range_text="0 (no clipping) or positive")
    reward_on_invalid: str = option("skip", "A NaN/None reward: skip (leave the response out, counted in reward/skipped) or error.")
    reward_timeout: float = option(30.0, "Seconds to wait for the reward endpoint.", gt=0)
    reward_retries: int = option(2, "Retries when the reward endpoint does not answer.", ge=0)
    # advantages and losses
    advantage: str = option("gae", "Advantage estimator: gae, reinforce, reinforce_baseline, rloo, grpo, reinforce_pp or "
                                   "reinforce_pp_baseline (REINFORCE++: global normalisation).")
    gamma: float = option(1.0, "Discount over response tokens.", ge=0, le=1)
    lam: float = option(0.95, "GAE lambda.", ge=0, le=1)
    whiten_advantages: bool = option(True, "Standardise advantages over the rollout's tokens.")
    scale_rewards: bool = option(True, "grpo: divide by the group's reward std (False: Dr. GRPO, mean-centring only).")
    policy_loss: str = option("ppo_clip", "ppo_clip, reinforce (the plain -A log pi surrogate) or gspo (one clipped ratio per response).")
    loss_aggregation: str = option("token_mean", "token_mean, sequence_mean (original GRPO) or constant (Dr. GRPO: / max_new_tokens).")
    ppo_epochs: int = option(4, "Passes over each rollout.", ge=1)
    num_minibatches: int = option(1, "Optimizer steps per pass over a rollout.", ge=1)
    clip_range: float = option(0.2, "PPO ratio clip epsilon.", gt=0, lt=1, why="the ratio is clipped to [1 - clip_range, 1 + clip_range]")
    clip_range_high: float = option(0.0, "Upper clip epsilon (0: same as clip_range; larger is DAPO's clip-higher).", ge=0, range_text="0 (same as clip_range) or positive")
    target_kl: float = option(0.0, "Stop a rollout's remaining minibatches once policy/approx_kl exceeds this (0: never).", ge=0, range_text="0 (never stop early) or positive")
    ent_coef: float = option(0.0, "Entropy bonus coefficient.", ge=0)
    value_model: str = option("head", "gae's value model: head (on the policy backbone), policy (separate critic from the policy), reward (critic from the reward model).")
    vf_coef: float = option(0.1, "Value loss coefficient.", ge=0)
    value_learning_rate: float = option(0.0, "The value model's own learning rate (0: learning_rate). A head that starts at zero learns slowly at the policy's rate.", ge=0, range_text="0 (use learning_rate) or positive")
    vf_clip: float = option(0.2, "Value clipping range (0 disables).", ge=0, range_text="0 (no clipping) or positive")
    # KL to the reference
    reference: str = option("auto", "Reference policy: auto (adapter with LoRA, else copy), copy (a frozen copy) or adapter (LoRA base, adapters off).")
    reference_model: str = option("", "Reference model; empty uses the starting policy (`model`).")
    kl_estimator: str = option("k1", "Per-token KL estimator: k1, k2 or k3.")
    kl_in: str = option("reward", "Where the KL term goes: reward (-beta*kl per token, PPO style) or loss (+beta*kl, GRPO style).")
    kl_coef: float = option(0.05, "beta, the KL coefficient (initial value with adaptive control).", ge=0)
    kl_control: str = option("fixed", "fixed or adaptive (Ziegler et al. 2019: beta tracks kl_target).")
    kl_target: float = option(6.0, "Adaptive control's target KL, nats per response.", gt=0)
    kl_horizon: float = option(10000.0, "Adaptive control's horizon, in responses.", gt=0)

    def validate(self) -> None:
        super().validate()
        choose(self, "advantage", ESTIMATORS)
        choose(self, "policy_loss", POLICY_LOSSES)
        choose(self, "loss_aggregation", AGGREGATIONS)
        choose(self, "value_model", ("head", "policy", "reward"))
        choose(self, "kl_estimator", KL_ESTIMATORS)
        choose(self, "kl_in", ("reward", "loss"))
        choose(self, "kl_control", KL_CONTROLLERS)
        choose(self, "reference", ("auto", "copy", "adapter"))
        choose(self, "generation_backend", ("hf", "vllm"))
        choose(self, "vllm_mode", ("colocate", "server"))
        choose(self, "vllm_importance_sampling_mode", IS_MODES)
        choose(self, "reward_on_invalid", ("skip", "error"))
        check_reward_specs(self.rewards)
        if 0 < self.clip_range_high < self.clip_range:
            raise AlignkitError(f"clip_range_high ({self.clip_range_high}) is below clip_range ({self.clip_range}); set it to 0 "
                                f"(the same as clip_range) or to clip_range or more (DAPO's clip-higher, e.g. 0.28)")
        if self.advantage in NEEDS_GROUPS and self.group_size < 2:
            raise AlignkitError(f"advantage: {self.advantage} compares responses to the same prompt; set group_size to 2 or more")
        if self.overlong_buffer >= self.max_new_tokens:
            raise AlignkitError(f"overlong_buffer ({self.overlong_buffer}) must be below max_new_tokens ({self.max_new_tokens}): it is "
                                f"the stretch before max_new_tokens over which the length penalty grows")
        if self.dynamic_sampling and self.group_size < 2:
            raise AlignkitError("dynamic_sampling drops groups whose responses all scored alike; set group_size to 2 or more")
        if self.num_minibatches > self.prompts_per_step * self.group_size:
            raise AlignkitError(f"num_minibatches={self.num_minibatches} is more than the {self.prompts_per_step * self.group_size} responses per rollout")
        if self.grad_accum_steps != 1:
            raise AlignkitError("grad_accum_steps is not used by online RL: a minibatch is rollout/num_minibatches responses, run in batch_size pieces")
        if self.max_prompt_length + self.max_new_tokens > self.max_length:
            raise AlignkitError(f"max_prompt_length + max_new_tokens ({self.max_prompt_length + self.max_new_tokens}) exceeds max_length={self.max_length}; raise max_length")
        if self.reference == "adapter" and self.lora_r == 0:
            raise AlignkitError("reference: adapter needs LoRA (set lora_r > 0); full fine-tuning uses reference: copy")
        if not (self.reward_model or self.reward_function or self.reward_url or self.rewards):
            raise AlignkitError("no reward configured: set reward_model, reward_function (e.g. hhh-mini-gold), reward_url or rewards")
        if self.value_model == "reward" and self.advantage == "gae" and not self.reward_model:
            raise AlignkitError("value_model: reward initialises the critic from reward_model; set reward_model or use value_model: head")


@dataclass
class GRPOConfig(PPOConfig):
    """`alignkit grpo`: group-relative policy optimisation (Shao et al. 2024): G responses per prompt, no value model,
    KL to the reference in the loss. Any PPOConfig key works; only the defaults differ."""

    output_dir: str = option("runs/grpo", "Where the final model, metrics.jsonl and TensorBoard logs go.")
    group_size: int = option(4, "Responses sampled per prompt (G).")
    advantage: str = option("grpo", "Advantage estimator: grpo, rloo, reinforce, reinforce_baseline, reinforce_pp, reinforce_pp_baseline or gae.")
    whiten_advantages: bool = option(False, "Standardise advantages over the rollout's tokens (grpo already normalises per group).")
    reward_normalize: bool = option(False, "Standardise rewards with running statistics (group normalisation makes it moot for grpo).")
    ppo_epochs: int = option(1, "Passes over each rollout (GRPO's mu).")
    kl_estimator: str = option("k3", "Per-token KL estimator: k1, k2 or k3 (GRPO uses k3, always >= 0).")
    kl_in: str = option("loss", "Where the KL term goes: loss (+beta*kl, GRPO style) or reward (PPO style).")
    kl_coef: float = option(0.04, "beta, the KL coefficient (the GRPO paper's 0.04).")


@dataclass
class RewardConfig(HoldoutDataArgs, TrainArgs):
    """`alignkit reward`: a Bradley-Terry reward model (or an ensemble of K) on (prompt, chosen, rejected) pairs."""

    data: str = option("", "Preference data (prompt, chosen, rejected; optional margin, strength): file, datasets directory or hub id.")
    eval_data: str = option("", "Held-out preference data; empty splits eval_fraction off the training data.")
    eval_fraction: float = option(0.05, "Share of training pairs held out when eval_data is empty.", ge=0, lt=1)
    output_dir: str = option("runs/reward", "Where the reward model (<output_dir>/model, or member-*/ for an ensemble), metrics.jsonl and logs go.")
    learning_rate: float = option(1e-5, "Peak AdamW learning rate (full fine-tuning; LoRA wants ~10-50x more).")
    center_rewards_coefficient: float = option(0.0, "Adds coef * mean((r_chosen + r_rejected)^2) to pull rewards toward mean 0 (Eisenstein et al. 2023 use 0.01); 0 disables.", ge=0, range_text="0 (off) or positive", why="the weight of the penalty pulling rewards toward mean 0")
    label_smoothing: float = option(0.0, "Assumed rate of flipped labels eps in [0, 0.5): loss -(1-eps) log s(z) - eps log s(-z).", ge=0, lt=0.5, why="a label-flip rate below one half")
    use_margin: bool = option(True, "Use the data's per-pair `margin` column (loss -log s(r_c - r_r - margin)) when it has one.")
    identical_pairs: str = option("drop", "Pairs whose chosen equals rejected (no preference signal): drop (counted and reported), keep, or error.")
    empty_responses: str = option("keep", "Pairs with an empty chosen or rejected response: keep (scored as just EOS; counted and reported), drop, or error.")
    share_prompt: bool = option(True, "Run prompt + chosen + rejected as one row with the prompt computed once (same rewards, fewer tokens).")
    group_by_length: bool = option(True, "Batch pairs of similar length together (less padding).")
    ensemble: int = option(1, "Train K reward models (seeds seed..seed+K-1, bootstrap resamples) into one ensemble directory.", ge=1)
    bootstrap: bool = option(True, "With ensemble > 1, train each member on a resample (with replacement) of the training pairs.")
    conservative_k: float = option(1.0, "The ensemble's default k for the conservative score mean - k * std (written to ensemble.json).", ge=0)
    normalization_pairs: int = option(0, "Training pairs scored after training for the reward mean/std saved in config.json; 0 scores all, N a seeded sample of N.", ge=0, range_text="0 (all training pairs) or a positive count")

    def validate(self) -> None:
        super().validate()
        choose(self, "identical_pairs", ("drop", "keep", "error"))
        choose(self, "empty_responses", ("keep", "drop", "error"))
        if self.seed + self.ensemble - 1 >= 2**32:
            raise AlignkitError(f"the last ensemble member's seed, seed + ensemble - 1, is {self.seed + self.ensemble - 1}; "
                                f"it must be below 2**32 ({2**32}): lower seed or ensemble")
        if self.ensemble > 1 and self.resume not in ("", "auto"):
            raise AlignkitError(f"resume: {self.resume!r} names one checkpoint, but an ensemble has one per member (in logs/member-*/); use resume: auto")
