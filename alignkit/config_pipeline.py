"""The configs of the evaluation and the pipeline: `alignkit eval`'s EvalConfig and `alignkit pipeline`'s PipelineConfig
with its `data:` sources and `stages:`. Each stage's own config is built from these by alignkit.pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config_checks import check_trackers
from alignkit.config_loader import choose, config_from_dict, option
from alignkit.data.tokenize import CHAT_TEMPLATE_MODES
from alignkit.errors import AlignkitError
from alignkit.models.precision import MIXED_PRECISION, resolve_mixed_precision

@dataclass
class EvalConfig:
    """`alignkit eval` and the pipeline's `eval:` section: policies against a reference on held-out prompts."""

    data: str = option("", "Evaluation prompts (rows with a `prompt` column; other columns go to the gold function).")
    data_split: str = option("test", "Split to read from a datasets directory or hub id.")
    limit: int = option(0, "Use only the first N prompts (0: all).", ge=0, range_text="0 (all) or a positive count")
    reward_model: str = option("", "Reward model or ensemble directory that scores answers (win rate by reward, ensemble std).")
    gold: str = option("", "Gold reward function, module:function, path/file.py:function or hhh-mini-gold.")
    judge: str = option("", "Pairwise LLM judge model (alias or directory); every pair is judged in both orders.")
    judge_endpoint: str = option("", "An OpenAI-compatible judge endpoint instead of a local judge model.")
    constitution: str = option("", "The judge's constitution file; empty: configs/constitution.md.")
    max_new_tokens: int = option(48, "Longest answer (greedy decoding).", ge=1)
    batch_size: int = option(16, "Sequences per scoring pass (reward model, KL), and prompts per generate call unless generation_batch_size is set.", ge=1)
    generation_batch_size: int = option(0, "Prompts per generate call (0: batch_size). Finished answers leave the batch, so generation "
                                           "gains from larger batches than scoring does.", ge=0, range_text="0 (batch_size) or a positive count")
    kl_samples: int = option(1, "Sampled answers per prompt for KL(policy || reference) (0: skip KL).", ge=0, range_text="0 (skip KL) or a positive count")
    gold_samples: int = option(0, "Answers sampled per prompt (at gold_temperature) for each model's sampled gold: the gold "
                                  "function's mean over them, the policy's expected gold (0: greedy gold only).", ge=0,
                               range_text="0 (off) or a positive count")
    gold_temperature: float = option(1.0, "Sampling temperature of the gold_samples answers (1: the policy's own distribution, what "
                                          "rollouts and the KL estimate sample; lower: closer to greedy).", gt=0,
                                     why="temperature 0 is greedy decoding, which the gold column already scores")
    tie_margin: float = option(0.0, "Score differences at or below this are ties (reward model and gold).", ge=0)
    judge_tie_margin: float = option(0.05, "A judge probability within this of 0.5 (after averaging both orders) is a tie.", ge=0, lt=0.5)
    confidence: float = option(0.95, "Confidence level of the bootstrap intervals.", gt=0, lt=1)
    bootstrap: int = option(2000, "Bootstrap resamples.", ge=1)
    train_prompts: str = option("", "Training prompts for the distribution-shift report (needs pairs and reward_model).")
    pairs: str = option("", "Held-out preference pairs: the reward model's accuracy by distance to train_prompts.")
    shift_buckets: int = option(3, "Equal-count distance buckets in the shift report.", ge=1)
    mixed_precision: str = option("auto", "Autocast for generation and scoring: auto (bf16 where the hardware computes it natively), bf16 or no.")
    chat_template: str = option("", "How prompts are rendered: empty follows each model's saved setting (auto for a model "
                                    "alignkit did not train), or auto, always, never for every model.")
    seed: int = option(0, "Seed for the sampled answers (KL, sampled gold) and the bootstrap.", ge=0, lt=2**32, why="numpy and accelerate seed with a 32-bit unsigned number")

    def validate(self) -> None:
        choose(self, "mixed_precision", MIXED_PRECISION)
        self.mixed_precision = resolve_mixed_precision(self.mixed_precision)
        if self.chat_template:
            choose(self, "chat_template", CHAT_TEMPLATE_MODES)
        if self.gold_samples and not self.gold:
            raise AlignkitError(f"gold_samples is {self.gold_samples} but there is no gold function to score the sampled answers: "
                                f"set gold (module:function, path/file.py:function or hhh-mini-gold) or gold_samples: 0")


PIPELINE_STAGES = ("sft", "samples", "reward", "rs", "policy", "dpo", "eval", "report")  # the usual order; ppo/grpo name the policy stage
STAGE_AFTER = {"samples": ("sft",), "reward": ("sft", "samples"), "rs": ("sft", "samples"), "policy": ("sft", "samples", "reward"),
               "dpo": ("sft", "samples"), "eval": ("sft", "samples", "reward", "rs", "policy", "dpo"),
               "report": ("sft", "samples", "reward", "rs", "policy", "dpo", "eval")}  # stages that must run first when both are configured
STAGE_DATA = {"sft": ("sft",), "samples": ("prompts", "preference"), "rs": ("prompts", "preference"), "reward": ("preference",), "dpo": ("preference",), "policy": ("prompts", "preference"),
              "eval": ("prompts", "preference")}  # the data: sources a stage reads (any one of them)
DATA_WHAT = {"sft": "SFT rows: messages, text or prompt+completion", "preference": "(prompt, chosen, rejected) pairs",
             "prompts": "rows with a `prompt` column"}
PRESET_TASKS = ("hhh-mini",)
RL_REWARD_KEYS = ("reward_model", "reward_function", "reward_url", "rewards")


@dataclass
class DataSource:
    """One source of the pipeline's `data:` section (`data.sft`, `data.preference`, `data.prompts`); a bare string is its path."""

    path: str = option("", "File (jsonl/json/parquet/csv), folder of such files, save_to_disk folder or hub id (owner/name).")
    split: str = option("train", "Split trained on, from a folder, save_to_disk folder or hub id.")
    config: str = option("", "Config (subset) name of a hub dataset, for `path` and `test`.")
    test: str = option("", "Held-out source (file, folder, save_to_disk folder or hub id); empty: the source's own test_split "
                           "when it has one, else data.test_fraction of its rows held out with the seed.")
    test_split: str = option("test", "Split read as the held-out rows: from `test`, or without it from the source itself.")


@dataclass
class PipelineData:
    """The pipeline's `data:` section: your own SFT rows, preference pairs and prompts, copied into <workdir>/data."""

    sft: DataSource | None = option(None, "SFT rows (messages, text or prompt+completion).")
    preference: DataSource | None = option(None, "Preference pairs (prompt, chosen, rejected): the reward model's and DPO's data.")
    prompts: DataSource | None = option(None, "Prompts for RL, the monitor and the evaluation; empty: the preference pairs' prompts.")
    test_fraction: float = option(0.1, "Share of a source's rows held out with the seed when it has no test split and no `test` "
                                        "(preference pairs and prompts are held out by prompt).", gt=0, lt=1)

    def validate(self) -> None:
        for name in DATA_WHAT:
            source = getattr(self, name)
            if source is not None and not source.path:
                raise AlignkitError(f"data.{name}.path is empty; set it to a file, folder, save_to_disk folder or hub id")


@dataclass
class PipelineConfig:
    """`alignkit pipeline FILE.yaml`: SFT -> reward model -> PPO or GRPO, and DPO -> eval -> report, in one folder, on your
    own `data:` or a preset task; every stage optional."""

    workdir: str = option("runs/pipeline", "Where the data, every stage's run folder, eval/ and report.html go; finished stages are reused.")
    model: str = option("smollm2-135m-instruct", "The base model the first trained stage starts from.")
    seed: int = option(0, "Seed for the data and every stage.", ge=0, lt=2**32, why="numpy and accelerate seed with a 32-bit unsigned number")
    task: str = option("", "Preset that fills data: and the gold function: hhh-mini (generated into <workdir>/data, scored by its "
                           "gold judge). Empty: your own data: section, or hhh-mini when there is none.")
    n_train: int = option(800, "hhh-mini: training prompts generated.", ge=1)
    n_test: int = option(100, "hhh-mini: test prompts generated (the evaluation set).", ge=1)
    n_ood: int = option(100, "hhh-mini: prompts generated from held-out phrasings (the distribution-shift evaluation; 0: none).", ge=0)
    n_val: int = option(32, "Training prompts held out from RL/DPO for the over-optimization monitor (prompts_val.jsonl).", ge=0)
    policy: str = option("grpo", "Online RL stage: grpo or ppo.")
    report_to: list = option(["jsonl"], "Metric sinks of every training stage: jsonl (always written), tensorboard, wandb, trackio, "
                                        "mlflow or any accelerate tracker; a stage's own report_to overrides it.")
    data: dict = option({}, "Your own data: sft, preference, prompts (each a path, or {path, split, config, test, test_split}) and "
                            "test_fraction; see PipelineData.")
    stages: list | dict = option(["sft", "reward", "policy", "dpo", "eval", "report"],
                                 "Stages to run, in this order (data is always written first); or a mapping stage: true/false.")
    eval_base: bool = option(True, "Evaluate the base model too (as `base`), so the final table shows what SFT itself gained.")
    sft: dict = option({}, "Overrides for the SFT stage (see `alignkit sft --help`).")
    reward: dict = option({}, "Overrides for the reward-model stage (see `alignkit reward --help`).")
    rl: dict = option({}, "Overrides for the PPO/GRPO stage (see `alignkit grpo --help`), monitor: included.")
    dpo: dict = option({}, "Overrides for the DPO stage (see `alignkit dpo --help`), monitor: included.")
    samples: dict = option({}, "The samples stage: N answers per RL prompt from the SFT model, labelled (samples, temperature, "
                               "max_new_tokens, min_gap, min_score, reward_function; the preset's gold judge by default). With it, "
                               "DPO trains on these on-policy pairs, the reward model on the task's pairs plus them, rs on the best answers.")
    rs: dict = option({}, "Overrides for the rs stage: rejection-sampling fine-tuning, SFT of the SFT model on the samples' best answers.")
    eval: dict = option({}, "Overrides for the evaluation (see `alignkit eval --help`), plus judge: a model or an OpenAI-compatible "
                            "URL, judge_model: the endpoint's model name, reward_model: true/false (the trained reward model) "
                            "or a folder, function: module:fn (a Python scorer, what `gold` is in `alignkit eval`).")

    @property
    def preset(self) -> str:
        """The preset task in use: `task`, or hhh-mini when neither task nor data: is given; empty for your own data."""
        return self.task or ("" if self.data else "hhh-mini")

    def data_sources(self) -> PipelineData:
        """The `data:` section, checked key by key (a bare string is a source's path)."""
        values = {k: {"path": v} if k in DATA_WHAT and isinstance(v, str) else v for k, v in self.data.items()}
        return config_from_dict(PipelineData, values, "data section", prefix="data.")

    def stage_names(self) -> list[str]:
        """The stages to run, in order, the PPO/GRPO stage named `policy`."""
        stages = self.stages
        if isinstance(stages, str):  # from the command line: sft,dpo
            stages = [s.strip() for s in stages.strip("[]").split(",") if s.strip()]
        names = list(stages) if isinstance(stages, (list, dict)) else [stages]
        unknown = [s for s in names if s not in PIPELINE_STAGES + ("ppo", "grpo")]
        if unknown:
            raise AlignkitError(f"stages: unknown stage {unknown[0]!r}; choose from sft, reward, policy (the {self.policy} stage), dpo, eval, report")
        if isinstance(stages, dict):
            wrong = next((k for k, v in stages.items() if not isinstance(v, bool)), None)
            if wrong is not None:
                raise AlignkitError(f"stages.{wrong} must be true or false, got {stages[wrong]!r}")
            chosen = {"policy" if k in ("ppo", "grpo") else k for k, on in stages.items() if on}
            names = [s for s in PIPELINE_STAGES if s in chosen]
        return ["policy" if s in ("ppo", "grpo") else s for s in names]

    def validate(self) -> None:
        choose(self, "policy", ("grpo", "ppo"))
        check_trackers(self.report_to)
        if self.task not in ("",) + PRESET_TASKS:
            raise AlignkitError(f"task must be {' or '.join(PRESET_TASKS)} (a preset) or empty (your own data: section); got {self.task!r}")
        if self.task and self.data:
            raise AlignkitError(f"task: {self.task} writes its own data; remove task (to use your data: section) or data:")
        stages = self.stage_names()
        self._check_order(stages)
        if self.preset and self.n_val >= self.n_train:
            raise AlignkitError(f"n_val ({self.n_val}) must be below n_train ({self.n_train}): the held-out prompts come out of the training prompts")
        given = set(DATA_WHAT) if self.preset else {n for n in DATA_WHAT if getattr(self.data_sources(), n) is not None}
        for stage in stages:
            wanted = STAGE_DATA.get(stage, ())
            if wanted and not given & set(wanted):
                label = self.policy if stage == "policy" else stage
                raise AlignkitError(f"stages: {label} needs data.{wanted[0]} ({DATA_WHAT[wanted[0]]})"
                                    + (f" or data.{wanted[1]}" if len(wanted) > 1 else "") + f"; add it to data:, or drop {label} from stages")
        if "policy" in stages and "reward" not in stages and not any(self.rl.get(k) for k in RL_REWARD_KEYS):
            raise AlignkitError(f"stages: {self.policy} needs a reward: add reward to stages (a reward model trained on data.preference), "
                                f"or set rl.reward_function (module:fn), rl.reward_model or rl.reward_url")
        if "rs" in stages and "samples" not in stages:
            raise AlignkitError("stages: rs fine-tunes on the samples stage's best answers; add samples to stages (after sft)")
        if "samples" in stages and not self.preset and not any(self.samples.get(k) for k in ("reward_function", "reward_model", "reward_url")):
            raise AlignkitError("stages: samples needs a labeller for the sampled answers: set samples.reward_function (module:fn), "
                                "samples.reward_model or samples.reward_url")
        if "eval" in stages:
            self._check_eval(stages)

    def _check_order(self, stages: list[str]) -> None:
        for i, name in enumerate(stages):
            if name in stages[:i]:
                raise AlignkitError(f"stages: {name} is listed twice; list each stage once")
            later = [s for s in stages[i + 1:] if s in STAGE_AFTER.get(name, ())]
            if later:
                raise AlignkitError(f"stages: {later[0]} must come before {name}, which uses its output; reorder stages")

    def _check_eval(self, stages: list[str]) -> None:
        section = self.eval
        if not {"sft", "rs", "policy", "dpo"} & set(stages):
            raise AlignkitError("stages: eval compares trained models with the base model; add sft, dpo or policy to stages")
        if section.get("function") and section.get("gold"):
            raise AlignkitError("eval: function and gold name the same scorer (a Python function); keep one")
        reward_model = section.get("reward_model", True)
        if reward_model is True and "reward" not in stages and "reward_model" in section:
            raise AlignkitError("eval.reward_model: true scores with the trained reward model; add reward to stages, "
                                "or set eval.reward_model to a reward-model folder or false")
        if section.get("judge_model") and not str(section.get("judge") or section.get("judge_endpoint") or "").startswith(("http://", "https://")):
            raise AlignkitError("eval.judge_model names the model of an OpenAI-compatible endpoint; set eval.judge to its URL (http://...)")
        scorers = [self.preset, section.get("function"), section.get("gold"), section.get("judge"), section.get("judge_endpoint"),
                   reward_model if isinstance(reward_model, str) else reward_model is not False and "reward" in stages]
        if not any(scorers):
            raise AlignkitError("eval has nothing to score the answers with: set eval.judge (a model, or an OpenAI-compatible URL), "
                                "eval.function (module:fn), or add reward to stages")


