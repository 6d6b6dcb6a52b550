"""COLA inside a Hugging Face ``transformers.Trainer``.

:class:`ColaCallback` turns the Trainer's LoRA fine-tuning of a ``PeftModel`` into a
chain: when training begins it builds a :class:`cola_opt.chain.optimizer.ResidualLowRankOptimizer`
around the Trainer's own optimizer (so the Trainer's LR scheduler, gradient
accumulation, clipping, mixed precision and DDP all stay as they are), and after every
optimizer step it calls ``chain.advance()``, which ties a knot at the scheduled steps:
merge in float32, re-initialise the factors, reset the optimizer state of the factors.
Knot steps count optimizer steps, as ``TrainerState.global_step`` does. See
``docs/trainer.md``::

    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    cola = ColaCallback(chain_length=3)
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cola])
    trainer.train()
    export_merged(cola.chain, model, "out/merged")
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from ..chain.optimizer import ResidualLowRankOptimizer
from ..chain.reset import make_reset_policy
from ..chain.schedules import uniform_knots, validate_knots
from .config import check_chain_length
from .distributed import advance_chain, full_parameters
from .guard import NonFiniteGuard
from .lora import lora_sites

__all__ = ["ColaCallback", "unwrap_optimizer"]


def unwrap_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or the argument itself)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class ColaCallback(TrainerCallback):
    """A ``TrainerCallback`` that runs COLA on the Trainer's ``PeftModel``.

    Give either ``knot_steps`` or ``chain_length`` (knots spread evenly over the run's
    ``max_steps``, :func:`cola_opt.chain.schedules.uniform_knots`).

    Args:
        knot_steps: optimizer steps (1-based, as ``global_step``) after which a knot is
            tied; each in ``[1, max_steps - 1]``.
        chain_length: number of links, ``>= 1`` (1: plain LoRA).
        ranks: rank of each link (``ranks[0]`` must be the adapter's ``r``); ``None``
            keeps ``r``. Not with several processes (DDP buckets hold the old storage).
        reset: optimizer state policy at a knot: ``"full"`` (COLA), ``"keep"``,
            ``"prune:<ratio>"`` or ``"prune:<ratio>:random"`` (ReLoRA).
        seed: seeds each link's fresh ``A`` (the same on every process).
        fp32_master: keep an fp32 master copy of every adapted weight (for bf16/fp16
            bases; see :class:`cola_opt.chain.sites.Site`).
        adapter: the PEFT adapter name.
        guard: ``"skip"`` or ``"stop"`` (a :class:`cola_opt.llm.guard.NonFiniteGuard`), or a
            guard: checks the gradients before every optimizer step; ``"skip"`` drops
            the step's update (gradients set to ``None``), ``"stop"`` raises.
        link_adapters_dir: if given, every link is saved there as a PEFT adapter just
            before it is merged (:class:`cola_opt.llm.export.LinkAdapterWriter`).

    Attributes:
        chain: the :class:`ResidualLowRankOptimizer`, built when training begins
            (``None`` before); ``chain.knots`` records the knots tied.

    Raises:
        ValueError: at construction on both or neither of ``knot_steps`` and
            ``chain_length``, or a bad value; when training begins, if the model holds no
            LoRA layer of ``adapter``, a knot lies outside ``[1, max_steps - 1]``, a run
            resumes past a knot (the Trainer's checkpoints hold the adapter, not the
            merged base), or the optimizer misses the LoRA factors.
    """

    def __init__(
        self,
        knot_steps: Sequence[int] | None = None,
        *,
        chain_length: int | None = None,
        ranks: Sequence[int] | None = None,
        reset: str = "full",
        seed: int = 0,
        fp32_master: bool = False,
        adapter: str = "default",
        guard: str | NonFiniteGuard | None = None,
        link_adapters_dir: str | os.PathLike | None = None,
    ) -> None:
        if (knot_steps is None) == (chain_length is None):
            raise ValueError("give exactly one of knot_steps and chain_length")
        if knot_steps is not None:
            knot_steps = validate_knots(knot_steps)
        if chain_length is not None:
            check_chain_length(chain_length)
        make_reset_policy(reset)  # fail early on a bad spec
        self.knot_steps, self.chain_length, self.ranks = knot_steps, chain_length, ranks
        self.reset, self.seed, self.fp32_master, self.adapter = reset, int(seed), bool(fp32_master), adapter
        self.guard = NonFiniteGuard(guard) if isinstance(guard, str) else guard
        self.link_adapters_dir = link_adapters_dir
        self.chain: ResidualLowRankOptimizer | None = None
        self._model = None
        self._step_lr: list[float] | None = None

    # ------------------------------------------------------------------ Trainer events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError("ColaCallback needs the Trainer's model and optimizer (transformers >= 4.46)")
        knots = self.knot_steps if self.knot_steps is not None else uniform_knots(state.max_steps, self.chain_length)
        knots = validate_knots(knots, state.max_steps)
        if state.global_step and any(k <= state.global_step for k in knots):
            done = [k for k in knots if k <= state.global_step]
            raise ValueError(
                f"resuming at step {state.global_step} past the knot(s) {done}: "
                "the Trainer's checkpoint holds the adapter but not the merged base weights"
            )
        if self.ranks is not None and args.world_size > 1:
            raise ValueError(
                f"ranks={list(self.ranks)}: changing the rank is not supported with {args.world_size} processes"
            )
        with full_parameters(model):
            sites = lora_sites(model, self.adapter, fp32_master=self.fp32_master)
            self.chain = ResidualLowRankOptimizer(
                sites, unwrap_optimizer(optimizer), knot_steps=knots, ranks=self.ranks, reset=self.reset, seed=self.seed
            )
        self.chain.step_count = state.global_step
        self._model = model
        if self.link_adapters_dir is not None:
            from .export import LinkAdapterWriter

            LinkAdapterWriter(self.chain, model, self.link_adapters_dir, adapter=self.adapter)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.guard is not None and model is not None:
            params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.guard.check(None, params, step=state.global_step + 1)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.chain is not None:  # the LR this step used: the Trainer steps its scheduler before on_step_end
            self._step_lr = [float(g["lr"]) for g in self.chain.optimizer.param_groups]

    def on_step_end(self, args, state, control, **kwargs):
        if self.chain is None:
            raise RuntimeError("ColaCallback.on_step_end before on_train_begin")
        record = advance_chain(self.chain, self._model)
        if record is not None and self._step_lr is not None:
            record.lr = self._step_lr  # as in a plain loop: the LR of the link's last step
        if self.chain.step_count != state.global_step:
            raise RuntimeError(
                f"the chain counted {self.chain.step_count} optimizer steps but the Trainer {state.global_step}; "
                "was the chain stepped elsewhere too?"
            )
