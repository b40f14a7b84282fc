"""Training: the GRPO policy worker and the cold-start SFT."""
