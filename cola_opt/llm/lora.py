"""LoRA through PEFT, and chain sites over PEFT LoRA layers.

PEFT injects the adapters (:func:`inject_lora`); the chain (merge, re-init, reset)
is ours and acts through :class:`LoraSite`. The PEFT layer types the chain carries:
``lora.Linear`` over ``nn.Linear`` or GPT-2's ``Conv1D`` (``fan_in_fan_out``), and
``lora.Embedding`` over ``nn.Embedding``. Any other LoRA layer, and any quantized base
weight, is refused up front, naming the layer: a knot must never skip a layer silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..chain.sites import Site, local_part
from ..checks import real
from .models import QUANTIZED_HINT, quantized_weight

__all__ = ["LoraSettings", "LoraSite", "check_targets", "inject_lora", "lora_sites", "matching_modules",
           "model_skeleton"]

_BIAS_CHOICES = ("none", "all", "lora_only")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters; defaults follow COLA's paper (Section 5: r=8, alpha=16, q and v).

    Attributes:
        r: rank of each link, ``>= 1``.
        lora_alpha: ``scaling = lora_alpha / r``.
        lora_dropout: dropout probability on the LoRA input, in ``[0, 1)``.
        target_modules: module-name suffixes to adapt (PEFT's matching: the full name
            equals the entry or ends with ``"." + entry``).
        bias: PEFT's ``bias``: ``"none"``, ``"all"`` or ``"lora_only"``. Trainable
            biases are updated directly by the inner optimizer; knots leave them alone.

    Raises:
        ValueError: in ``__post_init__``, on a bad value, naming it.
    """

    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    bias: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoRA rank r must be an integer >= 1, got {self.r!r}")
        real(self.lora_alpha, "lora_alpha", above=0.0)
        real(self.lora_dropout, "lora_dropout", at_least=0.0)
        if not self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout = {self.lora_dropout!r} must be < 1")
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(t.strip() for t in self.target_modules.split(",") if t.strip())
        self.target_modules = tuple(self.target_modules)
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"target_modules {list(self.target_modules)} must be non-empty module names")
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        if self.bias not in _BIAS_CHOICES:
            raise ValueError(f"bias {self.bias!r} must be one of {_BIAS_CHOICES}")


def _adaptable_shape(module: nn.Module) -> tuple[int, int] | None:
    """Logical ``(m, n)`` of a layer the chain can adapt, or ``None``.

    ``(out, in)`` for a Linear or GPT-2 ``Conv1D``; ``(embedding_dim, num_embeddings)``
    for an Embedding (PEFT's ``lora_embedding_B @ lora_embedding_A`` is the transposed
    update of its ``(num_embeddings, embedding_dim)`` weight).
    """
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        return module.nf, module.weight.shape[0]
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.num_embeddings
    return None


def _kind(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def matching_modules(model: nn.Module, target_modules: tuple[str, ...]) -> dict[str, nn.Module]:
    """Modules whose qualified name equals a target or ends with ``"." + target``."""
    out = {}
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in target_modules):
            out[name] = module
    return out


def _tied_names(model: nn.Module) -> dict[object, list[str]]:
    """Storage key (:func:`cola_opt.chain.sites.storage_key`) -> every parameter name that uses it."""
    from ..chain.sites import storage_key

    names: dict[object, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(storage_key(p), []).append(name)
    return names


def _refuse_tied(tied: dict[object, list[str]], weight: torch.Tensor, what: str) -> None:
    """Raise if ``weight`` is tied to another parameter (``tied``: :func:`_tied_names`): a merge would change both."""
    from ..chain.sites import storage_key

    names = tied.get(storage_key(weight), [])
    if len(names) > 1 and weight.numel() > 0:
        raise ValueError(f"{what} is tied to {names} (one weight); merging a knot would change both "
                         "(tied weights, peft #2018)")


def _validate_targets(model: nn.Module, settings: LoraSettings) -> None:
    found = matching_modules(model, settings.target_modules)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _adaptable_shape(m)})
    unmatched = [t for t in settings.target_modules if not matching_modules(model, (t,))]
    if unmatched:
        what = "match no module" if not found else f"include {unmatched}, which match no module"
        raise ValueError(
            f"target_modules {list(settings.target_modules)} {what} of {type(model).__name__}; "
            f"its linear and embedding layers are named {linear}"
        )
    tied = _tied_names(model)
    for name, module in found.items():
        why = quantized_weight(module)
        if why is not None:
            raise ValueError(f"target module {name!r} is quantized ({_kind(module)}, {why}); {QUANTIZED_HINT}")
        shape = _adaptable_shape(module)
        if shape is None:
            raise ValueError(f"target module {name!r} is a {_kind(module)}, which COLA cannot adapt: target "
                             "Linear, GPT-2 Conv1D or Embedding layers")
        if settings.r > min(shape):
            raise ValueError(f"LoRA rank r={settings.r} is larger than layer {name!r} allows ({shape[0]}x{shape[1]})")
        _refuse_tied(tied, module.weight, f"target module {name!r}")


def model_skeleton(model: str) -> nn.Module:
    """A model's architecture without its weights: built on the meta device from its config alone.

    Well under a second, even for 7B models.

    Args:
        model: built-in name, local directory or hub id (see :mod:`cola_opt.llm.models`).

    Raises:
        ValueError: if the model's config declares a quantization
            (:func:`cola_opt.llm.models.check_float_model`).
        cola_opt.llm.models.ModelLoadError: if the model's config cannot be read.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from .models import ModelLoadError, check_float_model, resolve_model_dir

    check_float_model(model)
    path = resolve_model_dir(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the config of model {model!r}: {e}") from e
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def check_targets(model: str, settings: LoraSettings, ranks=()) -> None:
    """Check ``target_modules`` and every rank against a model's architecture, without its weights.

    The model is built on the meta device from its config alone, so this costs well under
    a second even for 7B models; :func:`inject_lora` repeats the same checks on the real model.

    Args:
        model: built-in name, local directory or hub id (see :mod:`cola_opt.llm.models`).
        settings: the LoRA settings; ``settings.r`` is checked.
        ranks: further ranks to check (the links of a rank step-down, say).

    Raises:
        ValueError: as :func:`inject_lora`; or if the model's config declares a
            quantization (:func:`cola_opt.llm.models.check_float_model`).
        cola_opt.llm.models.ModelLoadError: if the model's config cannot be read.
    """
    import dataclasses

    skeleton = model_skeleton(model)
    for r in sorted({settings.r, *ranks}):
        _validate_targets(skeleton, dataclasses.replace(settings, r=r))


def inject_lora(model: nn.Module, settings: LoraSettings):
    """Wrap a Hugging Face model with PEFT LoRA adapters.

    Args:
        model: any ``transformers`` causal LM (or other ``nn.Module`` PEFT supports).
        settings: the LoRA hyper-parameters.

    Returns:
        the ``peft.PeftModel``; only LoRA factors (and biases per ``settings.bias``)
        require grad.

    Raises:
        ValueError: if ``target_modules`` match nothing, match a module other than a
            Linear, GPT-2 Conv1D or Embedding, a quantized one (naming the layer and the
            way out), or a weight tied to another; or if ``r`` exceeds a matched layer's
            dimensions. All checked before PEFT touches the model.
    """
    from peft import LoraConfig, get_peft_model

    _validate_targets(model, settings)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=list(settings.target_modules),
        bias=settings.bias,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class LoraSite(Site):
    """A chain site over one PEFT LoRA layer (one active adapter).

    - ``lora.Linear`` over ``nn.Linear``: the logical weight is the stored ``(out, in)``.
    - ``lora.Linear`` over GPT-2's ``Conv1D`` (``fan_in_fan_out``): the stored weight is
      ``(in, out)`` and :attr:`weight` is its transposed view.
    - ``lora.Embedding``: the factors are ``lora_embedding_B`` ``(embedding_dim, r)`` and
      ``lora_embedding_A`` ``(r, num_embeddings)``, so the logical weight is the
      transposed view ``(embedding_dim, num_embeddings)`` of the stored
      ``(num_embeddings, embedding_dim)`` table. A fresh link starts as PEFT starts one
      (``A = 0``, ``B`` standard normal from the chain's generator), so that ``B`` gets
      gradients; ``B @ A = 0`` all the same.

    Args:
        layer: a ``peft.tuners.lora.Linear`` or ``peft.tuners.lora.Embedding``.
        name: the module's qualified name.
        adapter: the adapter name.
        keep_initial, fp32_master: as in :class:`cola_opt.chain.sites.Site`.

    Raises:
        ValueError: if ``layer`` has no adapter ``adapter``, uses DoRA (whose magnitude
            vector the merge would not carry) or another PEFT LoRA variant, or a bias in
            ``lora_B`` (``lora_bias=True``), which ``scaling * B @ A`` leaves out.
    """

    def __init__(self, layer, name: str, adapter: str = "default", *, keep_initial=False, fp32_master=False):
        self.embedding = adapter in getattr(layer, "lora_embedding_A", {})
        if adapter not in layer.lora_A and not self.embedding:
            raise ValueError(f"layer {name!r} has no LoRA adapter {adapter!r}")
        if getattr(layer, "use_dora", {}).get(adapter, False):
            raise ValueError(f"layer {name!r} uses DoRA, which COLA's merge does not support")
        variant = getattr(layer, "lora_variant", {}).get(adapter)
        if variant is not None:
            raise ValueError(
                f"layer {name!r} uses the LoRA variant {type(variant).__name__}, which COLA's merge does not support"
            )
        if getattr(layer, "lora_bias", {}).get(adapter, False):
            raise ValueError(
                f"layer {name!r} has lora_bias=True; COLA merges scaling * B @ A only, so use lora_bias=False"
            )
        self.layer = layer
        self.adapter = adapter
        super().__init__(name, keep_initial=keep_initial, fp32_master=fp32_master)

    @property
    def weight(self) -> torch.Tensor:
        w = self.layer.get_base_layer().weight
        return w.T if self.embedding or getattr(self.layer, "fan_in_fan_out", False) else w

    @property
    def lora_B(self) -> nn.Parameter:
        if self.embedding:
            return self.layer.lora_embedding_B[self.adapter]
        return self.layer.lora_B[self.adapter].weight

    @property
    def lora_A(self) -> nn.Parameter:
        if self.embedding:
            return self.layer.lora_embedding_A[self.adapter]
        return self.layer.lora_A[self.adapter].weight

    @property
    def scaling(self) -> float:
        return float(self.layer.scaling[self.adapter])

    @torch.no_grad()
    def reset_factors(self, rank: int | None = None, generator: torch.Generator | None = None) -> None:
        super().reset_factors(rank, generator)
        if self.embedding:  # PEFT's start for lora.Embedding (reset_lora_parameters): A = 0, B ~ N(0, 1)
            fresh = torch.randn(self.lora_B.shape, generator=generator, dtype=torch.float32)
            self.lora_B.copy_(local_part(fresh.to(self.lora_B.dtype), self.lora_B))
            self.lora_A.zero_()

    def _resize(self, rank: int) -> None:
        # Same Parameter objects with new storage, so the inner optimizer keeps them.
        m, n = self.shape
        self.lora_B.data = self.lora_B.new_zeros(m, rank)
        self.lora_A.data = self.lora_A.new_zeros(rank, n)
        if not self.embedding:
            self.layer.lora_B[self.adapter].in_features = rank
            self.layer.lora_A[self.adapter].out_features = rank
        alpha = self.layer.lora_alpha[self.adapter]
        self.layer.r[self.adapter] = rank
        rslora = getattr(self.layer, "use_rslora", {}).get(self.adapter, False)
        self.layer.scaling[self.adapter] = alpha / (rank**0.5 if rslora else rank)


def lora_sites(peft_model: nn.Module, adapter: str = "default", **site_kwargs) -> list[LoraSite]:
    """One :class:`LoraSite` per PEFT LoRA layer of ``peft_model`` that holds ``adapter``, in module order.

    Every such layer becomes a site, or the model is refused: a layer the chain skipped
    would never be merged or reset at a knot, and ``unload()`` would drop its update.

    Args:
        peft_model: a model holding PEFT LoRA layers (a ``PeftModel``, or a model that
            ``get_peft_model``/``inject_adapter_in_model`` changed).
        adapter: the adapter name.
        site_kwargs: passed to :class:`LoraSite`: ``keep_initial=True``,
            ``fp32_master=True`` (an fp32 master copy of each adapted weight, for bf16 and
            fp16 bases; it costs 4 bytes per adapted weight entry).

    Raises:
        ValueError: if the model holds no LoRA layer; a LoRA layer sits on a quantized
            base (bitsandbytes 8-bit or 4-bit, ...; naming the layer and the way out); a
            LoRA layer is of another type than ``lora.Linear`` over a Linear or Conv1D or
            ``lora.Embedding`` (``lora.Conv2d``, ``MultiheadAttention``,
            ``target_parameters``, ...), naming it; an adapted weight is tied to another
            parameter (a merge would change both, peft #2018); or as :class:`LoraSite`.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Embedding as LoraEmbedding
    from peft.tuners.lora.layer import Linear as LoraLinear

    sites = []
    for name, m in peft_model.named_modules():
        if not isinstance(m, LoraLayer) or not (adapter in m.lora_A or adapter in getattr(m, "lora_embedding_A", {})):
            continue
        base = m.get_base_layer()
        why = quantized_weight(base)
        if why is not None:
            raise ValueError(f"LoRA layer {name!r} ({_kind(m)}) sits on a quantized base layer ({why}); {QUANTIZED_HINT}")
        if not isinstance(m, (LoraLinear, LoraEmbedding)) or _adaptable_shape(base) is None:
            raise ValueError(
                f"LoRA layer {name!r} is a {_kind(m)} over a {_kind(base)}; COLA's chain merges LoRA on Linear, GPT-2 "
                "Conv1D and Embedding layers only: leave it out of target_modules (or target_parameters)"
            )
        sites.append(LoraSite(m, name, adapter, **site_kwargs))
    if not sites:
        raise ValueError("the model holds no PEFT LoRA layer; call inject_lora first")
    tied = _tied_names(peft_model)
    for s in sites:
        _refuse_tied(tied, s.layer.get_base_layer().weight, f"LoRA layer {s.name!r}")
    return sites
