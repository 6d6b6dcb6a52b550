"""The pre-flight: everything a run checks before it loads a model, in one function.

:func:`preflight` validates a :class:`~cola_opt.llm.config.FinetuneConfig`, draws (or
takes) its data, plans its optimizer steps and knots, and checks its LoRA targets and
ranks against the model's architecture (built on the meta device, no weights). The
trainer calls it for its run, :func:`cola_opt.llm.compare.compare` for every method and
:func:`cola_opt.llm.grid.run_grid` for every cell, all before the first run starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..chain.lr_schedules import check_lr_schedule
from ..chain.schedules import uniform_knots, validate_knots
from .config import FinetuneConfig
from .galore import check_galore_targets
from .lm_plan import train_items
from .lora import check_targets
from .models import check_float_model
from .notify import warn
from .tasks import Splits, get_task, is_user_task, sample_splits

__all__ = ["Plan", "draw", "plan_steps", "preflight"]


@dataclass(frozen=True)
class Plan:
    """What a checked run will do.

    Attributes:
        splits: the examples drawn (train, dev, test).
        steps_per_epoch: optimizer steps per pass over the training examples.
        total_steps: optimizer steps of the run (0 for a method that does not train).
        knots: the knot steps (empty unless the method ties knots).
    """

    splits: Splits
    steps_per_epoch: int
    total_steps: int
    knots: tuple[int, ...]


def plan_steps(cfg: FinetuneConfig, n_train: int) -> tuple[int, int, tuple[int, ...]]:
    """Optimizer steps per epoch, total steps, and knot steps for ``cfg``.

    Steps per epoch are ``ceil(n_train / (batch_size * grad_accum))``; the total is
    ``epochs`` times that, or ``max_steps``. A method that ties no knots (``lora``,
    ``galore``, ``full``, ``zero-shot``) has none; ``cola`` and ``relora`` use
    ``knot_steps`` if given, else ``chain_length`` even links.

    Raises:
        ValueError: if the knots do not fit in the run (more links than steps, or a
            knot step at or past the last step), ``link_ranks`` has not one entry
            per link, or the warm-up is as long as the run or longer (the LR would never
            reach ``lr``).
    """
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps if cfg.max_steps is not None else per_epoch * cfg.epochs
    if not cfg.method_type.knots:
        return per_epoch, total, ()
    if cfg.knot_steps is not None:
        knots = validate_knots(cfg.knot_steps, total)
    else:
        knots = uniform_knots(total, cfg.chain_length)
    if cfg.link_ranks is not None and len(cfg.link_ranks) != len(knots) + 1:
        raise ValueError(f"link_ranks {list(cfg.link_ranks)} must have one entry per link: {len(knots) + 1} links")
    return per_epoch, total, knots


def draw(cfg: FinetuneConfig) -> Splits:
    """The examples of ``cfg``'s task and seed (MeZO sampling, :func:`cola_opt.llm.tasks.sample_splits`; a user's
    data: :meth:`cola_opt.llm.tasks.UserData.sample`).

    A method that trains nothing needs no train split. A count that could not be met
    (``n_train`` above what the train split holds) is warned about here, once per draw,
    and recorded in ``Splits.capped``.
    """
    if is_user_task(cfg.task):
        splits = cfg.user_data().sample(seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev, n_test=cfg.n_test)
    else:
        splits = sample_splits(get_task(cfg.task), seed=cfg.seed, n_train=cfg.n_train, n_dev=cfg.n_dev,
                               n_test=cfg.n_test, data_dir=cfg.data_dir, need_train=cfg.method_type.trains)
    for line in splits.warnings():
        warn(line)
    return splits


def preflight(cfg: FinetuneConfig, splits: Splits | None = None) -> Plan:
    """Validate ``cfg``, draw its data (unless given), plan its steps and check its LoRA targets.

    Nothing is written and no weights are loaded; the LoRA check builds the model's
    skeleton from its config (well under a second, even for 7B models).

    Args:
        cfg: the run's configuration.
        splits: examples already drawn (compare and the grid share one draw); ``None``
            draws them.

    Raises:
        ValueError: a bad value, knots that do not fit, LoRA (or GaLore) targets that
            match nothing or a rank too large for a layer, an LR schedule whose warm-up or
            re-warm-up does not fit the run, naming the value; a language-model example
            that does not fit ``max_length`` (:func:`cola_opt.llm.lm_plan.train_items`).
        FileNotFoundError, RuntimeError: the data cannot be found or read.
        cola_opt.llm.models.ModelLoadError: the model's config cannot be read.
    """
    cfg.validate()
    if splits is None:
        splits = draw(cfg)
    per_epoch, total, knots = plan_steps(cfg, train_items(cfg, splits))  # a text task trains on its packed blocks
    method = cfg.method_type
    if method.trains:  # before the model's config is read: a built-in model would be fetched first
        check_lr_schedule(cfg.schedule, total, knots, cfg.warmup_steps, cfg.restart_warmup_steps)
    if method.lora:
        check_targets(cfg.model, cfg.lora_settings(), cfg.link_ranks or ())
    elif method.galore:
        check_galore_targets(cfg.model, cfg.target_modules)
    elif method.trains:
        check_float_model(cfg.model)  # a quantized base cannot be trained in full either
    return Plan(splits, per_epoch, total if method.trains else 0, knots)
