"""Training, with no Ray: ``PolicyTrainer`` (the GRPO update, checkpoints), MoE routing and its
telemetry, the cold-start SFT, FSDP2 sharding, batches and log-probs. ``rlwhf.workers`` wraps
these in Ray actors; ``rlwhf.starting_policy`` runs the SFT as a task."""
