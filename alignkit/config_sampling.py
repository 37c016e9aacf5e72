"""The configs of the stages that sample from the policy before they train: rejection sampling (`alignkit rs`)
and iterated rounds (`alignkit iterate`).

Both draw N answers per prompt from the current model and label them with a reward source (a Python function
such as hhh-mini-gold, a reward model or ensemble, or an HTTP reward server), as `alignkit data sample-pairs` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.config import ModelArgs, SFTConfig
from alignkit.config_loader import choose, option
from alignkit.errors import AlignkitError


@dataclass
class SamplingArgs:
    """N answers per prompt from the model being trained, scored by one reward source."""

    prompts: str = option("", "Prompts to sample answers for (rows with a `prompt` column; other columns go to the reward function).")
    prompts_split: str = option("train", "Split to read from a datasets directory or hub id.")
    limit: int = option(0, "Use only the first N prompts (0: all).", ge=0, range_text="0 (all) or a positive count")
    samples: int = option(8, "Answers sampled per prompt (N).", ge=1)
    temperature: float = option(1.0, "Sampling temperature.", gt=0, why="greedy answers to one prompt are all alike")
    top_p: float = option(1.0, "Nucleus sampling mass.", gt=0, le=1)
    max_new_tokens: int = option(64, "Longest sampled answer; an answer cut here is not kept unless keep_truncated.", ge=1)
    max_prompt_length: int = option(512, "Longer prompts are skipped (counted in the log).", ge=1)
    sample_batch_size: int = option(64, "Answers sampled together.", ge=1)
    keep_truncated: bool = option(False, "Let answers cut at max_new_tokens be kept, chosen or rejected.")
    greedy: bool = option(False, "Also decode each prompt's greedy answer, first of its N + 1: the answer an evaluation sees, so a "
                                 "pair can push down the greedy mistake and best-of-N keeps the greedy answer on a tie.")
    reward_function: str = option("", "Labeller: a Python reward function, module:function, path/file.py:function or hhh-mini-gold.")
    reward_model: str = option("", "Labeller: a reward model or ensemble directory.")
    reward_url: str = option("", "Labeller: an HTTP reward server (the protocol `--reward_url` of grpo reads).")

    def reward_specs(self) -> list[dict]:
        """The one configured labeller as an `rl.rewards.build_rewards` spec list."""
        specs = [spec for key, spec in (("reward_function", {"type": "function", "function": self.reward_function}),
                                        ("reward_model", {"type": "model", "path": self.reward_model}),
                                        ("reward_url", {"type": "http", "url": self.reward_url}))
                 if getattr(self, key)]
        return specs

    def check_labeller(self, command: str, required: bool = True) -> None:
        given = [key for key in ("reward_function", "reward_model", "reward_url") if getattr(self, key)]
        if len(given) > 1:
            raise AlignkitError(f"{command}: {' and '.join(given)} are both set; keep one labeller")
        if required and not given:
            raise AlignkitError(f"{command} needs a labeller for the sampled answers: set reward_function (module:function or "
                                f"hhh-mini-gold), reward_model (a reward-model folder) or reward_url")


@dataclass
class RejectionSamplingConfig(SamplingArgs, SFTConfig):
    """`alignkit rs`: rejection-sampling fine-tuning (best-of-N, as in Llama 2 and RAFT): sample `samples` answers per
    prompt from `model`, keep each prompt's best by the labeller, then SFT `model` on the kept answers."""

    min_score: float = option(0.0, "Keep a prompt's best answer only when it scores at least this (hhh-mini-gold scores lie in [-1, 1]).")

    def validate(self) -> None:
        super().validate()
        if not self.prompts:
            raise AlignkitError("rs needs prompts to sample on: set prompts (a file with a `prompt` column)")
        self.check_labeller("rs")


ITERATE_METHODS = ("dpo", "kto", "rs")
ITERATE_STOP_ON = ("greedy", "sampled")


@dataclass
class IterateConfig(SamplingArgs, ModelArgs):
    """`alignkit iterate`: rounds of sample -> label -> check the pairs -> (reward model) -> train -> evaluate, each
    round starting from the last one's policy, stopping when held-out scores stop improving."""

    output_dir: str = option("runs/iterate", "Where round_0 (the start's evaluation), round_1, ... and rounds.json go.")
    seed: int = option(0, "Seed: each round samples with it (from a new policy) and trains with seed + the round's number.", ge=0, lt=2**31, why="each round adds its number to it")
    rounds: int = option(3, "Rounds at most.", ge=1)
    method: str = option("dpo", "What each round trains on its labelled samples: dpo (best vs worst pairs; loss: ipo etc. through "
                                "train:), kto (the pairs as desirable / undesirable rows) or rs (SFT on each prompt's best answer).")
    human: bool = option(False, "Label by people: each round writes annotate.jsonl for `alignkit annotate serve`, and reads the "
                                "votes exported to round_N/votes.jsonl (`alignkit annotate export`); without them the round waits.")
    min_gap: float = option(0.0, "Keep a pair only when best - worst >= this (labeller scores).", ge=0)
    min_score: float = option(0.0, "rs: keep a prompt's best answer only when it scores at least this.")
    prompts_per_round: int = option(0, "Fresh prompts per round, taken in turn from a seeded shuffle of `prompts` (0: all, every round).",
                                    ge=0, range_text="0 (all prompts every round) or a positive count")
    eval_prompts: str = option("", "Validation prompts: the stop rule and the choice of the best round look only at these.")
    report_prompts: dict = option({}, "More prompt sets reported every round but never used to stop, e.g. {test: ..., ood: ...}.")
    eval_function: str = option("", "Scores held-out answers (module:function or hhh-mini-gold); empty: the labeller.")
    eval_max_new_tokens: int = option(48, "Length of the greedy held-out answers.", ge=1)
    eval_batch_size: int = option(25, "Prompts per generate call in the evaluation.", ge=1)
    eval_samples: int = option(0, "Also sample this many answers per held-out prompt at eval_temperature: each set gets a "
                                  "`<set> sampled` score, the mean over them, the policy's expected score (eval's sampled "
                                  "gold; 0: greedy answers only).", ge=0, range_text="0 (greedy only) or a positive count")
    eval_temperature: float = option(1.0, "Sampling temperature of the eval_samples answers.", gt=0,
                                     why="temperature 0 is greedy decoding, which the greedy score already measures")
    stop_on: str = option("greedy", "The validation score the stop rule and the best round read: greedy (the greedy answers) "
                                    "or sampled (the eval_samples mean).")
    patience: int = option(1, "Stop after this many rounds in a row without a validation gain of min_improvement.", ge=1)
    min_improvement: float = option(0.0, "The validation gain over the best round so far that counts as improving.", ge=0)
    train: dict = option({}, "Overrides for each round's training stage (alignkit dpo / kto / sft keys: learning_rate, max_steps, "
                             "beta, loss, lora_r, ...).")
    reward: dict = option({}, "Retrain a reward model every round on all labelled pairs so far (plus reward.data, if given): "
                              "alignkit reward keys; empty: no reward model.")
    confidence: float = option(0.95, "Confidence level of the bootstrap intervals.", gt=0, lt=1)
    bootstrap: int = option(2000, "Bootstrap resamples.", ge=1)

    def validate(self) -> None:
        super().validate()
        choose(self, "method", ITERATE_METHODS)
        if not self.prompts:
            raise AlignkitError("iterate needs prompts to sample on: set prompts (a file with a `prompt` column)")
        if not self.eval_prompts:
            raise AlignkitError("iterate needs eval_prompts (validation prompts, not the test set): the stop rule reads them")
        self.check_labeller("iterate", required=not self.human)
        if self.human and self.reward_specs():
            raise AlignkitError("iterate: human: true labels by votes; remove reward_function / reward_model / reward_url (or set human: false)")
        if self.human and not self.eval_function:
            raise AlignkitError("iterate: with human: true set eval_function (module:function) to score held-out answers between rounds")
        choose(self, "stop_on", ITERATE_STOP_ON)
        if self.stop_on == "sampled" and not self.eval_samples:
            raise AlignkitError("iterate: stop_on: sampled reads the validation prompts' sampled score; set eval_samples "
                                "(answers per prompt, e.g. 8) or stop_on: greedy")
        if self.method != "rs" and self.samples < 2:
            raise AlignkitError(f"iterate: method {self.method} needs pairs; set samples to 2 or more")

    def eval_specs(self) -> list[dict]:
        return [{"type": "function", "function": self.eval_function}] if self.eval_function else self.reward_specs()
