"""The field names of TRL 1.16's config classes, and which of them a file for each alignkit command may hold."""

from __future__ import annotations



# Field names of TRL 1.16's config classes (transformers 5's TrainingArguments), plus the names older releases used
# that TRL users' files still carry (torch_dtype, max_prompt_length, evaluation_strategy, warmup_ratio, ...).
TRL_FIELDS = {name: frozenset(text.split()) for name, text in {
    "TrainingArguments": """
        accelerator_config activation_checkpointing activation_checkpointing_kwargs adam_beta1 adam_beta2 adam_epsilon
        auto_find_batch_size average_tokens_across_devices batch_eval_metrics bf16 bf16_full_eval data_seed
        dataloader_drop_last dataloader_in_order dataloader_multiprocessing_context dataloader_num_workers
        dataloader_persistent_workers dataloader_pin_memory dataloader_prefetch_factor ddp_backend ddp_broadcast_buffers
        ddp_bucket_cap_mb ddp_find_unused_parameters ddp_static_graph ddp_timeout debug deepspeed disable_tqdm do_eval
        do_predict do_train enable_jit_checkpoint eval_accumulation_steps eval_delay eval_do_concat_batches
        eval_on_start eval_steps eval_strategy eval_use_gather_object fp16 fp16_full_eval fsdp fsdp_config
        full_determinism gradient_accumulation_steps gradient_checkpointing gradient_checkpointing_kwargs
        greater_is_better hub_always_push hub_model_id hub_private_repo hub_revision hub_strategy hub_token
        ignore_data_skip include_for_metrics include_num_input_tokens_seen label_names label_smoothing_factor
        learning_rate length_column_name liger_kernel_config load_best_model_at_end local_rank log_level
        log_level_replica log_on_each_node logging_first_step logging_nan_inf_filter logging_steps logging_strategy
        lr_scheduler_kwargs lr_scheduler_type max_grad_norm max_steps metric_for_best_model neftune_noise_alpha
        num_train_epochs optim optim_args optim_target_modules output_dir parallelism_config per_device_eval_batch_size
        per_device_train_batch_size prediction_loss_only project push_to_hub remove_unused_columns report_to
        restore_callback_states_from_checkpoint resume_from_checkpoint run_name save_on_each_node save_only_model
        save_steps save_strategy save_total_limit seed skip_memory_metrics tf32 torch_compile torch_compile_backend
        torch_compile_mode torch_empty_cache_steps trackio_bucket_id trackio_space_id trackio_static_space_id
        train_sampling_strategy use_cache use_cpu use_liger_kernel warmup_steps weight_decay
        warmup_ratio evaluation_strategy overwrite_output_dir logging_dir save_safetensors
    """,
    "ModelConfig": """
        attn_implementation bnb_4bit_quant_storage bnb_4bit_quant_type dtype load_in_4bit load_in_8bit lora_alpha
        lora_dropout lora_modules_to_save lora_r lora_target_modules lora_target_parameters lora_task_type
        model_name_or_path model_revision use_bnb_nested_quant use_dora use_peft use_rslora
        torch_dtype
    """,
    "ScriptArguments": "dataset_config dataset_name dataset_streaming dataset_test_split dataset_train_split ignore_bias_buffers",
    "DatasetMixtureConfig": "datasets streaming test_split_size",
    "GRPOScriptArguments": "reward_funcs reward_model_name_or_path reward_model_path",
    "SFTConfig": """
        activation_offloading assistant_only_loss chat_template_path completion_only_loss dataset_kwargs
        dataset_num_proc dataset_text_field eos_token eval_packing loss_type max_length model_init_kwargs packing
        packing_strategy pad_to_multiple_of pad_token padding_free router_aux_loss_coef shuffle_dataset truncation_mode
        trust_remote_code
        max_seq_length dataset_batch_size
    """,
    "DPOConfig": """
        activation_offloading beta dataset_num_proc disable_dropout discopop_tau f_alpha_divergence_coef
        f_divergence_type label_smoothing ld_alpha loss_type loss_weights max_length model_init_kwargs
        pad_to_multiple_of pad_token padding_free precompute_ref_batch_size precompute_ref_log_probs
        ref_model_mixup_alpha ref_model_sync_steps router_aux_loss_coef sync_ref_model truncation_mode trust_remote_code
        use_weighting
        max_prompt_length max_completion_length rpo_alpha reference_free generate_during_eval use_logits_to_keep
        padding_value label_pad_token_id
    """,
    "KTOConfig": """
        activation_offloading beta dataset_num_proc desirable_weight disable_dropout loss_type max_length
        model_init_kwargs pad_to_multiple_of precompute_ref_batch_size precompute_ref_log_probs ref_model_mixup_alpha
        ref_model_sync_steps router_aux_loss_coef sync_ref_model trust_remote_code undesirable_weight
        max_prompt_length max_completion_length
    """,
    "RewardConfig": """
        activation_offloading center_rewards_coefficient chat_template_path dataset_num_proc disable_dropout eos_token
        max_length model_init_kwargs pad_to_multiple_of pad_token trust_remote_code
    """,
    "GRPOConfig": """
        beta cache_implementation cast_lm_head_to_fp32 chat_template_kwargs delta disable_dropout
        ds3_gather_for_generation entropy_coef entropy_coef_delta entropy_coef_max entropy_coef_min entropy_target
        epsilon epsilon_high generation_batch_size generation_kwargs importance_sampling_level log_completions
        log_completions_hub_repo log_multimodal log_unique_prompts loss_type mask_truncated_completions
        max_completion_length max_tool_calling_iterations min_p model_init_kwargs multi_objective_aggregation
        num_completions_to_print num_generations num_generations_eval num_iterations off_policy_mask_threshold
        pad_to_multiple_of ref_model_mixup_alpha ref_model_sync_steps repetition_penalty reward_weights
        router_aux_loss_coef sapo_temperature_neg sapo_temperature_pos scale_rewards shuffle_dataset
        steps_per_generation sync_ref_model temperature top_entropy_quantile top_k top_p
        transformers_continuous_batching_config trust_remote_code use_adaptive_entropy use_bias_correction_kl
        use_transformers_continuous_batching use_transformers_paged use_vllm vespo_k_neg vespo_k_pos vespo_lambda_neg
        vespo_lambda_pos vllm_enable_sleep_mode vllm_gpu_memory_utilization vllm_group_port vllm_importance_sampling_cap
        vllm_importance_sampling_clip_max vllm_importance_sampling_clip_min vllm_importance_sampling_correction
        vllm_importance_sampling_mode vllm_max_model_length vllm_mode vllm_model_impl vllm_server_base_url
        vllm_server_host vllm_server_port vllm_server_timeout vllm_structured_outputs_regex vllm_tensor_parallel_size
        max_prompt_length
    """,
    "TrlParser": "env",  # the YAML's environment variables
}.items()}

COMMON = ("TrainingArguments", "ModelConfig", "ScriptArguments", "DatasetMixtureConfig", "TrlParser")
# alignkit config class (by name; subclasses included) -> the TRL classes a `trl <command> --config` file fills
STAGES = {
    "SFTConfig": ("SFTConfig",), "DPOConfig": ("DPOConfig",), "KTOConfig": ("KTOConfig",), "RewardConfig": ("RewardConfig",),
    "PPOConfig": ("GRPOConfig", "GRPOScriptArguments"),  # alignkit ppo and grpo (GRPOConfig subclasses PPOConfig)
}
COMMANDS = {"SFTConfig": "sft", "DPOConfig": "dpo", "KTOConfig": "kto", "RewardConfig": "reward", "PPOConfig": "grpo, ppo"}
RL, OFFLINE = ("PPOConfig",), ("SFTConfig", "DPOConfig", "KTOConfig", "RewardConfig")
TRL_STYLE_BATCH = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation")


def stage_of(cls) -> str | None:
    """The `STAGES` key of an alignkit config class (its own name or a base's); None for a class that is no training stage."""
    return next((base.__name__ for base in cls.__mro__ if base.__name__ in STAGES), None)


def names_for(cls) -> frozenset[str] | None:
    """The TRL names a config file for this alignkit command may hold; None when the class is no training stage."""
    stage = stage_of(cls)
    if stage is None:
        return None
    return frozenset().union(*(TRL_FIELDS[name] for name in COMMON + STAGES[stage]))
