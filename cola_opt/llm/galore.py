"""GaLore through ``galore-torch``: the optimizer of method ``galore``, its targets, and its checkpointable state.

GaLore (Zhao et al. 2024, "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
Projection", Algorithm 1) trains a full weight ``W`` (m x n) with Adam moments kept in a
rank-``r`` subspace: every ``update_proj_gap`` steps the gradient's top ``r`` singular
vectors are taken as the projector ``P``; in between, the gradient is projected
(``P^T G`` or ``G P^T``, the smaller side), Adam runs on the projection, and the update
is projected back and multiplied by ``scale``. ``galore_torch.GaLoreAdamW`` does all of
this (``proj_type="std"``); this module chooses what it trains and makes its state
savable.

What is trained: the 2-D weights of the modules matched by ``target_modules`` (the same
name-suffix rule as LoRA's, :func:`cola_opt.llm.lora.matching_modules`) through GaLore.
Every other weight is frozen by default, so that GaLore, LoRA and COLA adapt the same
matrices; with ``train_others=True`` every other weight is trained by the plain (Adam)
group of the same optimizer, as in GaLore's own scripts (``regular_params``).

Checkpoints: ``GaLoreAdamW`` keeps a ``GaLoreProjector`` object in each target's state,
which neither a checkpoint nor ``Optimizer.load_state_dict`` can carry (the latter would
even mangle its string ``proj_type``). :func:`galore_optimizer` installs state-dict hooks:
a saved state holds each projector as ``{"ortho_matrix": P}`` (the tensor, bit for bit),
and loading rebuilds the projector from its param group's ``rank``, ``update_proj_gap``,
``scale`` and ``proj_type``. A resumed run therefore takes the same steps as one that was
never interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .lora import matching_modules, model_skeleton
from .models import QUANTIZED_HINT, quantized_weight

__all__ = ["GALORE_PROJ_TYPE", "check_galore_targets", "galore_optimizer", "galore_projectors", "galore_targets"]

GALORE_PROJ_TYPE = "std"  # project on the smaller side of each weight (GaLore's default)


def _galore_torch():
    """``(GaLoreAdamW, GaLoreProjector)``, imported when first needed (galore_torch imports bitsandbytes)."""
    from galore_torch import GaLoreAdamW
    from galore_torch.galore_projector import GaLoreProjector

    return GaLoreAdamW, GaLoreProjector


def galore_targets(model: nn.Module, target_modules: Sequence[str]) -> dict[str, nn.Parameter]:
    """The weights GaLore trains: the 2-D ``weight`` of every module matched by ``target_modules``.

    Args:
        model: the model (its real weights, or a meta-device skeleton).
        target_modules: module-name suffixes (a module matches if its qualified name equals
            an entry or ends with ``"." + entry``).

    Returns:
        ``{module name: weight Parameter}``, in module order; a weight shared by two matched
        modules (tied) appears once.

    Raises:
        ValueError: if an entry matches no module (listing the model's linear layers), or a
            matched module has no 2-D floating-point ``weight`` Parameter or a quantized one.
    """
    targets = tuple(target_modules)
    unmatched = [t for t in targets if not matching_modules(model, (t,))]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"target_modules {list(targets)}: {unmatched} match no module of {type(model).__name__}; "
                         f"its linear layers are named {linear}")
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in matching_modules(model, targets).items():
        why = quantized_weight(module)
        if why is not None:
            raise ValueError(f"target module {name!r} is quantized ({why}); {QUANTIZED_HINT}")
        w = getattr(module, "weight", None)
        if not isinstance(w, nn.Parameter) or w.ndim != 2:
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else None
            raise ValueError(f"target module {name!r} ({type(module).__name__}) has no 2-D weight for GaLore to "
                             f"project (weight shape {shape}); target linear layers")
        if id(w) not in seen:
            seen.add(id(w))
            out[name] = w
    return out


def check_galore_targets(model: str, target_modules: Sequence[str]) -> None:
    """Check GaLore's ``target_modules`` against a model's architecture, without its weights.

    Raises:
        ValueError: as :func:`galore_targets`, or a quantized model (from its config).
        cola_opt.llm.models.ModelLoadError: if the model's config cannot be read.
    """
    galore_targets(model_skeleton(model), target_modules)


def galore_optimizer(model: nn.Module, *, target_modules: Sequence[str], rank: int, update_proj_gap: int,
                     scale: float, lr: float, weight_decay: float = 0.0,
                     train_others: bool = False) -> torch.optim.Optimizer:
    """Set what ``model`` trains and return GaLore's optimizer over it (checkpointable; module docstring).

    Every parameter's ``requires_grad`` is set: the targets' weights (:func:`galore_targets`)
    train through the GaLore group; every other parameter trains through the plain group
    if ``train_others``, else is frozen.

    Args:
        model: a ``transformers`` model (no LoRA).
        target_modules: as :func:`galore_targets`.
        rank: rank ``r >= 1`` of the projection (at or above a weight's smaller side, the
            projection keeps it whole).
        update_proj_gap: steps between two SVDs of the gradient (GaLore's ``T``), ``>= 1``.
        scale: factor on the projected-back update (GaLore's ``alpha``), ``> 0``.
        lr, weight_decay: of both groups (``GaLoreAdamW``: Adam with ``eps=1e-6``, decoupled
            weight decay ``W -= lr * weight_decay * W``).
        train_others: also train every other weight (GaLore's scripts do); default: frozen.

    Returns:
        a ``galore_torch.GaLoreAdamW`` with param groups ``[plain, GaLore]`` (the plain one
        empty without ``train_others``).

    Raises:
        ValueError: as :func:`galore_targets`.
    """
    GaLoreAdamW, GaLoreProjector = _galore_torch()
    targets = galore_targets(model, target_modules)
    ids = {id(w) for w in targets.values()}
    others = []
    for p in model.parameters():
        p.requires_grad_(id(p) in ids or train_others)
        if train_others and id(p) not in ids:
            others.append(p)
    groups = [{"params": others},
              {"params": list(targets.values()), "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
               "proj_type": GALORE_PROJ_TYPE}]
    opt = GaLoreAdamW(groups, lr=lr, weight_decay=weight_decay, no_deprecation_warning=True)
    opt.register_state_dict_post_hook(_pack_projectors)
    opt.register_load_state_dict_post_hook(lambda optimizer: _unpack_projectors(optimizer, GaLoreProjector))
    return opt


def galore_projectors(optimizer: torch.optim.Optimizer) -> dict[nn.Parameter, torch.Tensor]:
    """Each GaLore weight's current projector matrix ``P`` (``(r, n)`` or ``(m, r)``), for weights stepped at least once."""
    return {p: optimizer.state[p]["projector"].ortho_matrix for g in optimizer.param_groups if "rank" in g
            for p in g["params"] if "projector" in optimizer.state.get(p, {})}


def _pack_projectors(optimizer: torch.optim.Optimizer, state_dict: dict) -> dict:
    """State-dict hook: each ``GaLoreProjector`` object as ``{"ortho_matrix": tensor}``; the live state is untouched."""
    state_dict["state"] = {
        k: {**v, "projector": {"ortho_matrix": v["projector"].ortho_matrix}} if "projector" in v else v
        for k, v in state_dict["state"].items()
    }
    return state_dict


def _unpack_projectors(optimizer: torch.optim.Optimizer, projector_class) -> None:
    """Load hook: rebuild each projector from its saved matrix and its param group's GaLore settings."""
    for group in optimizer.param_groups:
        if "rank" not in group:
            continue
        for p in group["params"]:
            saved = optimizer.state.get(p, {}).get("projector")
            if isinstance(saved, dict):
                proj = projector_class(group["rank"], update_proj_gap=group["update_proj_gap"], scale=group["scale"],
                                       proj_type=group["proj_type"])
                proj.ortho_matrix = saved["ortho_matrix"]
                optimizer.state[p]["projector"] = proj
