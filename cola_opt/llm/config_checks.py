"""Validation of a :class:`~cola_opt.llm.config.FinetuneConfig`: every check that needs no data and no model.

:meth:`FinetuneConfig.validate <cola_opt.llm.config.FinetuneConfig.validate>` calls
:func:`validate_config`; each check raises one ``ValueError`` that names the bad value,
before any work. A few fields are replaced by what they mean (the precision ``auto``
resolves to, the chain length of a method without knots, a path object by its string),
so that what is recorded is what runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from ..chain.lr_schedules import LR_SCHEDULES
from ..chain.reset import make_reset_policy
from ..chain.schedules import validate_knots
from ..checks import integer, real
from .export import check_export_target
from .guard import GUARD_POLICIES
from .methods import Method, get_method
from .models import check_model_name
from .precision import resolve_autocast
from .tasks import is_user_task, task_name
from .tasks.user import UserData
from .threads import check_threads

# A FinetuneConfig (cola_opt.llm.config imports this module, so the type is not imported back).
Config = Any

__all__ = ["RESUME_MODES", "USER_TASK_OPTIONS", "check_chain_length", "validate_config"]

RESUME_MODES = ("auto", "require", "never")

# the options of a user's data (docs/data.md), refused with a built-in task: the fields of UserData, and the
# chat template (a tokenizer setting of --task completion)
USER_TASK_OPTIONS = (*(f.name for f in dataclasses.fields(UserData) if f.name != "task"), "chat_template")


def check_chain_length(value) -> int:
    """``value`` if it is a number of links (an integer ``>= 1``, not bool).

    Raises:
        ValueError: naming the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"chain_length must be an integer >= 1, got {value!r}")
    return value


def validate_config(cfg: Config) -> None:
    """Check every field that can be checked without data or a model; record what will run.

    Three fields are replaced by what they mean: ``autocast="auto"`` by the precision
    it resolves to on this machine (:func:`cola_opt.llm.precision.resolve_autocast`),
    ``chain_length`` by 1 for a method without knots (``lora``, ``full``,
    ``zero-shot``), and a path-like folder by its string. ``model`` is checked to be a
    built-in name, an existing folder or a hub id (no hub is asked).

    Raises:
        ValueError: naming the first bad value.
    """
    _validate_task(cfg)
    method = get_method(cfg.method)
    check_model_name(cfg.model)
    for name in ("n_train", "n_test", "epochs", "batch_size", "grad_accum", "eval_batch_size", "max_length"):
        integer(getattr(cfg, name), name, 1)
    integer(cfg.n_dev, "n_dev", 0)
    integer(cfg.warmup_steps, "warmup_steps", 0)
    if integer(cfg.seed, "seed", 0) >= 2**32:
        raise ValueError(f"seed = {cfg.seed!r} must be below 2**32")
    if cfg.max_steps is not None:
        integer(cfg.max_steps, "max_steps", 1)
    real(cfg.lr, "lr", above=0.0)
    real(cfg.weight_decay, "weight_decay", at_least=0.0)
    real(cfg.max_grad_norm, "max_grad_norm", at_least=0.0)
    for name in ("data_dir", "output_dir", "export_dir", "export_links"):  # Path objects become strings
        v = getattr(cfg, name)
        if v is not None and not isinstance(v, str):
            if not isinstance(v, os.PathLike):
                raise ValueError(f"{name} must be a path, got {v!r}")
            setattr(cfg, name, os.fspath(v))
    if not cfg.output_dir:
        raise ValueError("output_dir is empty")
    _check_output_dir(cfg.output_dir)
    _validate_chain(cfg, method)
    make_reset_policy(cfg.optimizer_reset)
    make_reset_policy(cfg.relora_reset)
    _validate_schedule_and_galore(cfg)
    if cfg.dtype not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"dtype {cfg.dtype!r} must be fp32, bf16 or fp16")
    if not isinstance(cfg.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ValueError(f"device {cfg.device!r} must be auto, cpu, cuda or cuda:N")
    cfg.threads = check_threads(cfg.threads)  # "2" from the command line becomes 2
    cfg.autocast = resolve_autocast(cfg.autocast, cfg.device)  # what runs, never "auto", is fingerprinted
    _validate_robustness(cfg, method)
    _validate_precision(cfg, method)

def _validate_precision(cfg: Config, method: Method) -> None:
    """The fp32 master copy: only over low-precision LoRA weights, and not with checkpoints."""
    if not isinstance(cfg.fp32_master, bool):
        raise ValueError(f"fp32_master must be true or false, got {cfg.fp32_master!r}")
    if not cfg.fp32_master:
        return
    if cfg.dtype == "fp32":
        raise ValueError("fp32_master needs --dtype bf16 or fp16: with dtype 'fp32' the weights are their own "
                         "fp32 master")
    if method.trains and not method.lora:
        raise ValueError(f"fp32_master keeps the LoRA-adapted weights through the knots; method {cfg.method!r} "
                         "trains every weight with AdamW and has none")
    if cfg.checkpoint_every > 0:
        raise ValueError(f"fp32_master with checkpoint_every={cfg.checkpoint_every}: the master copy is not in "
                         "the checkpoint, so a resume would merge into a stale one; pass --checkpoint-every 0")

def _validate_task(cfg: Config) -> None:
    """The task; the options of a user's data (only with a user task, :data:`USER_TASK_OPTIONS`)."""
    if is_user_task(cfg.task):
        if cfg.candidates is not None and not isinstance(cfg.candidates, str):
            cfg.candidates = tuple(cfg.candidates)
        cfg.user_data().validate()
        if cfg.chat_template and cfg.task != "completion":
            raise ValueError(f"chat_template needs --task completion, not {cfg.task!r}")
        return
    task_name(cfg.task)
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    for name in USER_TASK_OPTIONS:
        if getattr(cfg, name) != defaults[name]:
            raise ValueError(f"{name} {getattr(cfg, name)!r} is an option of your own data: it needs --task text, "
                             f"completion or classification, and task {cfg.task!r} is built in")

def _validate_chain(cfg: Config, method: Method) -> None:
    """Chain length, knots, LoRA settings and link ranks."""
    if not method.knots and cfg.knot_steps is not None:
        raise ValueError(f"knot_steps {list(cfg.knot_steps)} needs a method with knots (cola, relora), "
                         f"not {cfg.method!r}")
    check_chain_length(cfg.chain_length)
    if not method.knots:
        cfg.chain_length = 1  # one link (lora, full) or none (zero-shot): record what runs
    if cfg.knot_steps is not None:
        cfg.knot_steps = validate_knots(cfg.knot_steps)
    cfg.lora_settings()  # checks rank, alpha, dropout, target_modules and bias
    if cfg.link_ranks is not None:
        cfg.link_ranks = tuple(cfg.link_ranks)
        if not method.knots:
            raise ValueError(f"link_ranks {list(cfg.link_ranks)} needs a method with knots (cola, relora), "
                             f"not {cfg.method!r}")
        if not cfg.link_ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in cfg.link_ranks):
            raise ValueError(f"link_ranks {list(cfg.link_ranks)} must be integers >= 1")
        if cfg.link_ranks[0] != cfg.rank:
            raise ValueError(f"link_ranks[0] = {cfg.link_ranks[0]} must equal rank = {cfg.rank} (the first link's rank)")

def _validate_schedule_and_galore(cfg: Config) -> None:
    """LR schedule, re-warm-up and GaLore settings (checked whatever the method, so a grid's base is whole)."""
    if cfg.lr_schedule is not None and cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {cfg.lr_schedule!r} must be one of {LR_SCHEDULES} or none (the method's)")
    if cfg.restart_warmup_steps is not None:
        integer(cfg.restart_warmup_steps, "restart_warmup_steps", 0)
    integer(cfg.galore_rank, "galore_rank", 1)
    integer(cfg.galore_update_proj_gap, "galore_update_proj_gap", 1)
    real(cfg.galore_scale, "galore_scale", above=0.0)
    if not isinstance(cfg.galore_train_others, bool):
        raise ValueError(f"galore_train_others must be true or false, got {cfg.galore_train_others!r}")

def _validate_robustness(cfg: Config, method: Method) -> None:
    """Checkpoint, resume, non-finite and export fields."""
    c = cfg.checkpoint_every
    if isinstance(c, bool) or not isinstance(c, int) or c < 0:
        raise ValueError(f"checkpoint_every must be an integer >= 0 (optimizer steps; 0 = off), got {c!r}")
    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"resume {cfg.resume!r} must be one of {RESUME_MODES}")
    if cfg.nonfinite not in GUARD_POLICIES:
        raise ValueError(f"nonfinite {cfg.nonfinite!r} must be one of {GUARD_POLICIES}")
    integer(cfg.max_consecutive_skips, "max_consecutive_skips", 1)
    integer(cfg.eval_every, "eval_every", 0)
    if not isinstance(cfg.dev_each_epoch, bool):
        raise ValueError(f"dev_each_epoch must be true or false, got {cfg.dev_each_epoch!r}")
    if not isinstance(cfg.update_rank, bool):
        raise ValueError(f"update_rank must be true or false, got {cfg.update_rank!r}")
    if cfg.update_rank and not method.trains:
        raise ValueError(f"update_rank measures what training changed; method {cfg.method!r} trains nothing")
    if cfg.update_rank and cfg.checkpoint_every > 0:
        raise ValueError(f"update_rank with checkpoint_every={cfg.checkpoint_every}: the ranks of the links before "
                         "a resume are not in the checkpoint; pass --checkpoint-every 0")
    if not method.trains and (cfg.export_dir or cfg.export_links):
        raise ValueError(f"export_dir and export_links need a trained method; method {cfg.method} trains nothing")
    if not method.lora and cfg.export_links:
        raise ValueError(f"export_links needs a LoRA method (lora, cola or relora); method {cfg.method} has no "
                         "links")
    if cfg.export_dir and cfg.export_links:
        d, links = Path(cfg.export_dir).resolve(), Path(cfg.export_links).resolve()
        if links == d or d in links.parents or links in d.parents:
            raise ValueError(
                f"export_links {cfg.export_links!r} must lie outside export_dir {cfg.export_dir!r}, and "
                "export_dir outside export_links: the export replaces its directory as a whole"
            )
    for name in ("export_dir", "export_links"):
        if getattr(cfg, name):
            check_export_target(getattr(cfg, name), name, output_dir=cfg.output_dir, run_dir=cfg.run_dir,
                                links=name == "export_links")


def _check_output_dir(path: str) -> None:
    """Refuse an output folder that is a file or cannot be created; creates nothing."""
    p = Path(path).expanduser().absolute()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"output_dir {path!r} is a file, not a folder")
        if not os.access(p, os.W_OK):
            raise ValueError(f"output_dir {path!r} is not writable")
        return
    parent = next(q for q in p.parents if q.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"output_dir {path!r} cannot be created: {str(parent)!r} is not a writable folder")
