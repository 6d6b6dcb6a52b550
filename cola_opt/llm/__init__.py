"""COLA for Hugging Face causal LMs: PEFT sites, models, tasks, scoring and the trainer."""
