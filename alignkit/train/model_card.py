"""The README.md model card of every saved model and adapter: what it was trained from, how, on what, and how well.

Written by `finish_run` (and the reward stage) once `summary.json` exists, into `<output_dir>/model/` and
`<output_dir>/adapter/` (replacing PEFT's blank template): YAML front matter for the Hub (`base_model`,
`library_name`, `tags`, `datasets`), then the base model as the user named it, the method and loss, the
datasets with row counts, the key hyperparameters, the final and held-out metrics, the alignkit version, the
command that reproduces the run, and the papers behind the method.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import sys
from pathlib import Path

import yaml

from alignkit.io import write_json, write_text


def alignkit_version() -> str:
    """The installed alignkit's version (the package's own __version__ for a checkout that was never installed)."""
    try:
        return importlib.metadata.version("alignkit")
    except importlib.metadata.PackageNotFoundError:
        return getattr(sys.modules.get("alignkit"), "__version__", "unknown")  # the package is imported before this module


# alias -> the Hub model it was made from (the embedded model is a de-quantised GGUF of it); tiny-llama is random
ALIAS_ORIGINS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

CITATIONS = {
    "rlhf": ("Ouyang et al. 2022, Training language models to follow instructions with human feedback",
             "@article{ouyang2022training,\n  title={Training language models to follow instructions with human feedback},\n"
             "  author={Ouyang, Long and Wu, Jeff and Jiang, Xu and others},\n  journal={NeurIPS},\n  year={2022}\n}"),
    "bradley_terry": ("Bradley & Terry 1952, Rank analysis of incomplete block designs",
                      "@article{bradley1952rank,\n  title={Rank analysis of incomplete block designs: I. The method of paired comparisons},\n"
                      "  author={Bradley, Ralph Allan and Terry, Milton E.},\n  journal={Biometrika},\n  volume={39},\n  year={1952}\n}"),
    "dpo": ("Rafailov et al. 2023, Direct Preference Optimization",
            "@article{rafailov2023direct,\n  title={Direct Preference Optimization: Your Language Model is Secretly a Reward Model},\n"
            "  author={Rafailov, Rafael and Sharma, Archit and Mitchell, Eric and Ermon, Stefano and Manning, Christopher D. and Finn, Chelsea},\n"
            "  journal={NeurIPS},\n  year={2023}\n}"),
    "ipo": ("Azar et al. 2023, A General Theoretical Paradigm to Understand Learning from Human Preferences",
            "@article{azar2023general,\n  title={A General Theoretical Paradigm to Understand Learning from Human Preferences},\n"
            "  author={Azar, Mohammad Gheshlaghi and others},\n  journal={arXiv:2310.12036},\n  year={2023}\n}"),
    "slic": ("Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
             "@article{zhao2023slic,\n  title={SLiC-HF: Sequence Likelihood Calibration with Human Feedback},\n"
             "  author={Zhao, Yao and Joshi, Rishabh and Liu, Tianqi and others},\n  journal={arXiv:2305.10425},\n  year={2023}\n}"),
    "rdpo": ("Chowdhury et al. 2024, Provably Robust DPO",
             "@article{chowdhury2024provably,\n  title={Provably Robust DPO: Aligning Language Models with Noisy Feedback},\n"
             "  author={Chowdhury, Sayak Ray and Kini, Anush and Natarajan, Nagarajan},\n  journal={ICML},\n  year={2024}\n}"),
    "simpo": ("Meng et al. 2024, SimPO: Simple Preference Optimization with a Reference-Free Reward",
              "@article{meng2024simpo,\n  title={SimPO: Simple Preference Optimization with a Reference-Free Reward},\n"
              "  author={Meng, Yu and Xia, Mengzhou and Chen, Danqi},\n  journal={NeurIPS},\n  year={2024}\n}"),
    "orpo": ("Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model",
             "@article{hong2024orpo,\n  title={ORPO: Monolithic Preference Optimization without Reference Model},\n"
             "  author={Hong, Jiwoo and Lee, Noah and Thorne, James},\n  journal={EMNLP},\n  year={2024}\n}"),
    "rpo": ("Pang et al. 2024, Iterative Reasoning Preference Optimization (the NLL term)",
            "@article{pang2024iterative,\n  title={Iterative Reasoning Preference Optimization},\n"
            "  author={Pang, Richard Yuanzhe and Yuan, Weizhe and Cho, Kyunghyun and He, He and Sukhbaatar, Sainbayar and Weston, Jason},\n"
            "  journal={NeurIPS},\n  year={2024}\n}"),
    "kto": ("Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization",
            "@article{ethayarajh2024kto,\n  title={KTO: Model Alignment as Prospect Theoretic Optimization},\n"
            "  author={Ethayarajh, Kawin and Xu, Winnie and Muennighoff, Niklas and Jurafsky, Dan and Kiela, Douwe},\n"
            "  journal={ICML},\n  year={2024}\n}"),
    "ppo": ("Schulman et al. 2017, Proximal Policy Optimization Algorithms",
            "@article{schulman2017proximal,\n  title={Proximal Policy Optimization Algorithms},\n"
            "  author={Schulman, John and Wolski, Filip and Dhariwal, Prafulla and Radford, Alec and Klimov, Oleg},\n"
            "  journal={arXiv:1707.06347},\n  year={2017}\n}"),
    "gae": ("Schulman et al. 2016, High-Dimensional Continuous Control Using Generalized Advantage Estimation",
            "@article{schulman2016gae,\n  title={High-Dimensional Continuous Control Using Generalized Advantage Estimation},\n"
            "  author={Schulman, John and Moritz, Philipp and Levine, Sergey and Jordan, Michael and Abbeel, Pieter},\n"
            "  journal={ICLR},\n  year={2016}\n}"),
    "grpo": ("Shao et al. 2024, DeepSeekMath (Group Relative Policy Optimization)",
             "@article{shao2024deepseekmath,\n  title={DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models},\n"
             "  author={Shao, Zhihong and Wang, Peiyi and Zhu, Qihao and others},\n  journal={arXiv:2402.03300},\n  year={2024}\n}"),
    "rloo": ("Ahmadian et al. 2024, Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback",
             "@article{ahmadian2024back,\n  title={Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs},\n"
             "  author={Ahmadian, Arash and Cremer, Chris and Gall{\\'e}, Matthias and others},\n  journal={ACL},\n  year={2024}\n}"),
    "reinforce": ("Williams 1992, Simple statistical gradient-following algorithms (REINFORCE)",
                  "@article{williams1992simple,\n  title={Simple statistical gradient-following algorithms for connectionist reinforcement learning},\n"
                  "  author={Williams, Ronald J.},\n  journal={Machine Learning},\n  volume={8},\n  year={1992}\n}"),
    "lora": ("Hu et al. 2022, LoRA: Low-Rank Adaptation of Large Language Models",
             "@article{hu2022lora,\n  title={LoRA: Low-Rank Adaptation of Large Language Models},\n"
             "  author={Hu, Edward J. and Shen, Yelong and Wallis, Phillip and others},\n  journal={ICLR},\n  year={2022}\n}"),
}

# loss / estimator -> (what the card calls it, the citations behind it)
DPO_LOSSES = {"sigmoid": ("DPO (sigmoid loss)", ["dpo"]), "ipo": ("IPO", ["ipo", "dpo"]), "hinge": ("SLiC hinge loss", ["slic", "dpo"]),
              "robust": ("robust DPO (rDPO)", ["rdpo", "dpo"]), "simpo": ("SimPO (reference-free)", ["simpo"]),
              "orpo": ("ORPO (reference-free, with NLL)", ["orpo"])}
ESTIMATORS = {"gae": ("GAE with a value model", ["gae"]), "grpo": ("group-normalised (GRPO)", ["grpo"]),
              "rloo": ("REINFORCE leave-one-out (RLOO)", ["rloo"]), "reinforce": ("REINFORCE", ["reinforce"]),
              "reinforce_baseline": ("REINFORCE with a batch-mean baseline", ["reinforce"])}


def method(config, stage: str) -> tuple[str, list[str]]:
    """One line naming the stage's method and loss, and the citation keys behind it."""
    if stage == "sft":
        return "Supervised fine-tuning: token cross-entropy on the completions (assistant turns) only", ["rlhf"]
    if stage == "reward":
        ensemble = f", an ensemble of {config.ensemble}" if getattr(config, "ensemble", 1) > 1 else ""
        return f"Bradley-Terry reward model: loss -log sigmoid(r_chosen - r_rejected){ensemble}", ["bradley_terry", "rlhf"]
    if stage == "dpo":
        name, keys = DPO_LOSSES.get(config.loss, (config.loss, ["dpo"]))
        rpo = f", plus {config.rpo_alpha} x the chosen answers' NLL (RPO)" if config.rpo_alpha else ""
        return f"Direct preference optimization: {name} (loss `{config.loss}`){rpo}", keys + (["rpo"] if config.rpo_alpha else [])
    if stage == "kto":
        return "Kahneman-Tversky optimization (KTO) on unpaired desirable / undesirable completions", ["kto"]
    if stage in ("ppo", "grpo"):
        name, keys = ESTIMATORS.get(config.advantage, (config.advantage, []))
        title = {"grpo": "Group Relative Policy Optimization (GRPO)", "ppo": "Online RL (PPO family)"}[stage]
        loss = "PPO clipped surrogate" if config.policy_loss == "ppo_clip" else "REINFORCE surrogate"
        return (f"{title}: advantages {name} (`{config.advantage}`), {loss} (`{config.policy_loss}`), "
                f"KL to the reference in the {config.kl_in} ({config.kl_estimator})", ["rlhf", "ppo", *keys])
    return stage, []


def hyperparameters(config, stage: str, summary: dict) -> dict:
    """The key hyperparameters, as the card's table shows them."""
    rows = {"learning rate": config.learning_rate, "batch size": f"{config.batch_size} x {config.grad_accum_steps} accumulation",
            "optimizer steps": summary.get("steps", config.max_steps), "scheduler": f"{config.lr_scheduler}, warmup {config.warmup_ratio}",
            "max length": config.max_length, "seed": config.seed, "mixed precision": config.mixed_precision}
    if stage in ("ppo", "grpo"):
        rows.update({"prompts per step x group size": f"{config.prompts_per_step} x {config.group_size}",
                     "kl_coef": f"{config.kl_coef} ({config.kl_control})", "clip range": config.clip_range,
                     "max new tokens": config.max_new_tokens, "temperature": config.temperature})
    if stage in ("dpo", "kto"):
        rows["beta"] = summary.get("beta", config.beta)
        rows["reference"] = summary.get("reference", config.reference)
    if stage == "kto":
        rows["desirable weight"] = config.desirable_weight
    if config.lora_r:
        rows["LoRA r / alpha / dropout"] = f"{config.lora_r} / {config.lora_alpha} / {config.lora_dropout}"
        rows["LoRA target modules"] = ", ".join(config.target_modules)
    else:
        rows["LoRA"] = "none (all weights trained)"
    return rows


def datasets(config, summary: dict) -> list[tuple[str, str]]:
    """[(source, rows)] for the training and held-out data."""
    train = next((summary[k] for k in ("train_rows", "train_pairs", "prompts") if k in summary), None)
    held = next((summary[k] for k in ("eval_rows", "eval_pairs") if k in summary), None)
    out = [(config.data, f"{train} training rows" if train is not None else "training data")]
    if getattr(config, "eval_data", ""):
        out.append((config.eval_data, f"{held} held-out rows" if held is not None else "held-out data"))
    elif held:
        fraction = getattr(config, "eval_fraction", 0)
        out[0] = (config.data, f"{train} training rows, {held} held out ({fraction:g} split off)")
    return out


def metrics(summary: dict) -> dict:
    """The summary's final and held-out numbers: losses, eval/*, rewards, KL, before/after for online RL."""
    wanted = ("first_loss", "final_loss", "first_reward", "final_reward", "final_kl", "nan_skipped")
    found = {k: summary[k] for k in wanted if k in summary}
    found.update({k: v for k, v in summary.items() if k.startswith("eval/")})
    for when in ("before", "after"):
        found.update({f"{k} ({when})": v for k, v in (summary.get(when) or {}).items()})
    return {k: v for k, v in found.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name or "")) and not Path(name).expanduser().exists()


def front_matter(config, stage: str, kind: str) -> dict:
    """The Hub metadata: base_model and datasets only where they are Hub ids (a local path there is invalid metadata)."""
    base = ALIAS_ORIGINS.get(config.model, config.model)
    meta = {"library_name": "peft" if kind == "adapter" else "transformers"}
    if _is_hub_id(base):
        meta["base_model"] = base
    meta["tags"] = ["alignkit", stage, *(["lora"] if config.lora_r else []), *(["reward-model"] if stage == "reward" else [])]
    hub_data = [d for d in (config.data, getattr(config, "eval_data", "")) if _is_hub_id(d)]
    if hub_data:
        meta["datasets"] = hub_data
    if stage != "reward":
        meta["pipeline_tag"] = "text-generation"
    return meta


def model_card(config, stage: str, summary: dict, output_dir: str | Path, kind: str = "model") -> str:
    """The README.md text of `<output_dir>/<kind>` (kind: model, adapter, or an ensemble member)."""
    how, cited = method(config, stage)
    cited = cited + (["lora"] if config.lora_r else [])
    name = getattr(config, "hub_model_id", "") or Path(output_dir).resolve().name
    origin = f" (alignkit's alias for a local copy of {ALIAS_ORIGINS[config.model]})" if config.model in ALIAS_ORIGINS else ""
    lines = ["---", yaml.safe_dump(front_matter(config, stage, kind), sort_keys=False).strip(), "---", "",
             f"# {name}", "",
             f"This {'LoRA adapter' if kind == 'adapter' else 'reward model' if stage == 'reward' else 'model'} was trained with "
             f"alignkit {alignkit_version()} (`alignkit {stage}`).", "",
             f"- **Base model:** `{config.model}`{origin}",
             f"- **Method:** {how}"]
    lines += [f"- **Data:** `{source}`: {rows}" for source, rows in datasets(config, summary)]
    if kind == "adapter":
        lines.append(f"- **Loading:** `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), this_folder)`, "
                     f"where base is `{ALIAS_ORIGINS.get(config.model, config.model)}`")
    lines += ["", "## Hyperparameters", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_number(v)} |" for k, v in hyperparameters(config, stage, summary).items()]
    results = metrics(summary)
    if results:
        lines += ["", "## Results", "", "From `summary.json`: the training loss (or reward) at the start and the end, and the held-out (`eval/`) metrics.", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_number(v)} |" for k, v in results.items()]
    lines += ["", "## Reproduce", "", f"With alignkit {alignkit_version()}:", "", "```bash",
              f"alignkit {stage} --config {Path(config.output_dir) / 'config.yaml'}", "```", "",
              "`config.yaml` is the full configuration this run used, saved in the run folder.", ""]
    if cited:
        lines += ["## Citations", ""]
        lines += [f"- {CITATIONS[k][0]}" for k in dict.fromkeys(cited)]
        lines += ["", "```bibtex", "\n\n".join(CITATIONS[k][1] for k in dict.fromkeys(cited)), "```", ""]
    return "\n".join(lines)


def name_base_model(adapter_dir: Path, model: str) -> None:
    """Writes the model the user named (alias, Hub id or path) as the adapter's `base_model_name_or_path`, not the cache path
    it resolved to, so the adapter says what it adapts wherever it is copied."""
    path = adapter_dir / "adapter_config.json"
    if path.is_file():
        config = json.loads(path.read_text())
        if config.get("base_model_name_or_path") != model:
            write_json(path, {**config, "base_model_name_or_path": model})


def write_model_cards(config, stage: str, summary: dict, output_dir: str | Path | None = None,
                      folders: list[tuple[Path, str]] | None = None) -> list[Path]:
    """README.md in each saved folder of the run (model/, adapter/, or the given [(folder, kind)]); returns those folders."""
    output_dir = Path(output_dir or config.output_dir)
    folders = folders if folders is not None else [(output_dir / kind, kind) for kind in ("model", "adapter")]
    written = []
    for folder, kind in folders:
        if folder.is_dir():
            if kind == "adapter":
                name_base_model(folder, config.model)
            write_text(folder / "README.md", model_card(config, stage, summary, output_dir, kind))
            written.append(folder)
    return written
