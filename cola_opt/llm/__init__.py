"""COLA for Hugging Face causal LMs: PEFT sites, models, tasks, scoring and the trainer."""

import logging

# bitsandbytes (a dependency of galore-torch, which PEFT imports whenever it is installed) warns at import that
# its optional 4-bit CPU kernels ("kernels-community") are missing; nothing here uses them.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
