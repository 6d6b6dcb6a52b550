"""The rank of what fine-tuning changed: ``X = W - W0`` per adapted matrix.

A chain of ``k`` rank-``r`` links can reach ``rank(X) <= k r``; one link stays at ``r``
(DESIGN §3, "invariants"). This module measures what a run actually reached, after the
fact, from what the trainer writes:

- from the links saved by ``--export-links`` (one PEFT adapter per link,
  :class:`cola_opt.llm.export.LinkAdapterWriter`): ``X`` after each link is the sum of the
  links' ``scaling * B @ A`` so far, so the rank's growth across the links comes with it;
- from two full model folders (a base and a fine-tuned export, full fine-tuning or
  GaLore): ``X = W - W0`` of the named matrices.

Two numbers per matrix, from its singular values ``s_1 >= s_2 >= ...`` (scipy's
``svdvals``, in float64): the *numerical rank*, the number of ``s_i > 0.01 s_1``, and the
*stable rank* ``||X||_F^2 / ||X||_2^2 = sum s_i^2 / s_1^2`` (Rudelson and Vershynin 2007),
which is at most the rank and is not moved by tiny singular values.

During a run, :class:`UpdateRankRecorder` (``--update-rank true``) measures the same after
every link and at the end, into ``results.json`` and the grid's records.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.linalg import svdvals

__all__ = ["RankSummary", "UpdateRankRecorder", "link_ranks", "rank_summary", "summarise_records", "weight_update_ranks"]

_LINK = re.compile(r"link-(\d+)$")
_ADAPTER_KEY = re.compile(r"^(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)\.weight$")


@dataclass(frozen=True)
class RankSummary:
    """The spectrum of one ``(m, n)`` update, summarised.

    Attributes:
        numerical_rank: number of singular values above ``rel_tol`` times the largest.
        stable_rank: ``||X||_F^2 / ||X||_2^2`` (0 for ``X = 0``).
        top: the largest singular value (the spectral norm).
        frobenius: ``||X||_F``.
    """

    numerical_rank: int
    stable_rank: float
    top: float
    frobenius: float

    def to_dict(self) -> dict:
        return asdict(self)


def rank_summary(X: np.ndarray, rel_tol: float = 0.01) -> RankSummary:
    """The numerical and stable rank of a 2-D array ``X`` (any float dtype; computed in float64).

    Raises:
        ValueError: if ``X`` is not 2-D or not finite, or ``rel_tol`` is not in ``(0, 1)``.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"an update must be a 2-D matrix, got shape {X.shape}")
    if not 0 < rel_tol < 1:
        raise ValueError(f"rel_tol {rel_tol!r} must be in (0, 1)")
    if not np.isfinite(X).all():
        raise ValueError("the update holds NaN or inf")
    s = svdvals(X)
    if s.size == 0 or s[0] == 0:
        return RankSummary(0, 0.0, 0.0, 0.0)
    return RankSummary(int((s > rel_tol * s[0]).sum()), float((s**2).sum() / s[0] ** 2), float(s[0]),
                       float(np.sqrt((s**2).sum())))


def _link_dirs(links_dir: Path) -> list[Path]:
    found = sorted((int(m.group(1)), p) for p in links_dir.iterdir() if (m := _LINK.fullmatch(p.name)) and p.is_dir())
    if not found:
        raise FileNotFoundError(f"{links_dir} holds no link-NN adapter folders (written by --export-links)")
    if [k for k, _ in found] != list(range(len(found))):
        raise ValueError(f"{links_dir}: link folders {[p.name for _, p in found]} are not link-00 .. link-{len(found) - 1:02d}")
    return [p for _, p in found]


def _link_deltas(link: Path) -> dict[str, np.ndarray]:
    """``{module name: scaling * B @ A}`` of one PEFT LoRA adapter folder, in float64, ``(out, in)`` orientation."""
    from safetensors.numpy import load_file

    config = json.loads((link / "adapter_config.json").read_text())
    tensors = load_file(link / "adapter_model.safetensors")
    parts: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        m = _ADAPTER_KEY.match(key)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = value.astype(np.float64)
    deltas = {}
    for name, p in parts.items():
        short = name.split(".")[-1]
        r = config.get("rank_pattern", {}).get(name, config["r"])
        alpha = config.get("alpha_pattern", {}).get(name, config["lora_alpha"])
        scaling = alpha / (np.sqrt(r) if config.get("use_rslora") else r)
        if "lora_A" in p and "lora_B" in p:
            d = p["lora_B"] @ p["lora_A"]  # (out, r) @ (r, in)
        elif "lora_embedding_A" in p and "lora_embedding_B" in p:
            d = (p["lora_embedding_B"] @ p["lora_embedding_A"]).T  # stored (dim, r) @ (r, vocab): weight is (vocab, dim)
        else:
            raise ValueError(f"{link}: module {name!r} ({short}) lacks one of its two LoRA factors")
        if config.get("fan_in_fan_out"):
            d = d.T
        deltas[name] = scaling * d
    if not deltas:
        raise ValueError(f"{link}/adapter_model.safetensors holds no LoRA factors")
    return deltas


def link_ranks(links_dir: str | os.PathLike, rel_tol: float = 0.01) -> dict[str, list[RankSummary]]:
    """Per adapted matrix, the rank of ``X`` after each link: ``{name: [after link 0, after link 1, ...]}``.

    ``X`` after link ``k`` is the sum of the deltas of links ``0 .. k``, the update the
    chain merged into that matrix (exact up to the float32 rounding of the saved factors).
    A run of one link (LoRA) gives a list of one.

    Raises:
        FileNotFoundError: no ``link-NN`` folder in ``links_dir``.
        ValueError: a gap in the link numbers, an adapter without factors, a link that
            adapts other matrices than the first, or as :func:`rank_summary`.
    """
    total: dict[str, np.ndarray] = {}
    out: dict[str, list[RankSummary]] = {}
    for k, link in enumerate(_link_dirs(Path(links_dir))):
        deltas = _link_deltas(link)
        if k and set(deltas) != set(total):
            raise ValueError(f"{link} adapts other matrices than link-00: {sorted(set(deltas) ^ set(total))[:3]}")
        for name, d in deltas.items():
            total[name] = total[name] + d if name in total else d
            out.setdefault(name, []).append(rank_summary(total[name], rel_tol))
    return out


def weight_update_ranks(base_dir: str | os.PathLike, tuned_dir: str | os.PathLike, target_modules: tuple[str, ...],
                        rel_tol: float = 0.01) -> dict[str, RankSummary]:
    """``{name: rank of W - W0}`` for every 2-D weight whose module name ends in one of ``target_modules``.

    Reads the ``*.safetensors`` files of two Hugging Face model folders of the same
    architecture (the base, and a fine-tuned export such as full fine-tuning's).

    Raises:
        FileNotFoundError: a folder without safetensors files.
        ValueError: no weight matches ``target_modules``, or two weights differ in shape.
    """
    from safetensors.numpy import load_file

    def weights(folder: str | os.PathLike) -> dict[str, np.ndarray]:
        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder} holds no .safetensors weights")
        found = {}
        for f in files:
            for key, value in load_file(f).items():
                module = key.removesuffix(".weight")
                if key.endswith(".weight") and value.ndim == 2 and module.split(".")[-1] in target_modules:
                    found[module] = value
        return found

    before, after = weights(base_dir), weights(tuned_dir)
    names = sorted(set(before) & set(after))
    if not names:
        raise ValueError(f"no 2-D weight of {list(target_modules)} is in both {base_dir} and {tuned_dir}")
    out = {}
    for name in names:
        if before[name].shape != after[name].shape:
            raise ValueError(f"{name}: shape {before[name].shape} in {base_dir}, {after[name].shape} in {tuned_dir}")
        out[name] = rank_summary(after[name].astype(np.float64) - before[name].astype(np.float64), rel_tol)
    return out


class UpdateRankRecorder:
    """Measure ``rank(W - W0)`` of the adapted matrices during a run: after every link, and at the end.

    Built on the model as loaded, before any update: it keeps a float32 copy of ``W0``
    for every 2-D weight of a module whose name ends in one of ``target_modules`` (for
    SmolLM2 on all seven linear layers, 106M entries, 425 MB). Then

    - for a chain (LoRA, COLA, ReLoRA): :meth:`attach` registers a ``"before"`` knot hook
      that records ``X = W + scaling B A - W0`` of every site just before each merge, and
      :meth:`finish` records the last link (still live in the factors);
    - for a method that trains the weights themselves (full fine-tuning, GaLore):
      :meth:`finish` records ``X = W - W0`` at the end.

    Each record is ``{"link": k, "step": t, "sites": {name: RankSummary dict}}``
    (:func:`rank_summary`: numerical rank at 1% of the largest singular value, stable
    rank, spectral and Frobenius norm). Not kept in checkpoints: a run that records ranks
    does not checkpoint (:class:`cola_opt.llm.config.FinetuneConfig` refuses both).

    Args:
        model: the model as loaded (no LoRA injected yet).
        target_modules: module-name suffixes, as in LoRA's ``target_modules``.

    Raises:
        ValueError: if no 2-D weight matches ``target_modules``.
    """

    def __init__(self, model, target_modules) -> None:
        import torch

        self.targets = tuple(target_modules)
        self.initial = {name: m.weight.detach().to(torch.float32, copy=True).cpu()
                        for name, m in model.named_modules()
                        if name.split(".")[-1] in self.targets and getattr(m, "weight", None) is not None
                        and m.weight.ndim == 2}
        if not self.initial:
            raise ValueError(f"no 2-D weight of a module named {list(self.targets)} to measure the update of")
        self.records: list[dict] = []

    def attach(self, chain) -> None:
        """Record at every knot of ``chain`` (a :class:`~cola_opt.chain.optimizer.ResidualLowRankOptimizer`)."""
        chain.add_knot_hook(lambda ch, _record: self._record_chain(ch), when="before")

    def finish(self, model, chain, lora: bool) -> list[dict]:
        """Record the end of the run: the live link of ``chain`` (``lora``), else ``model``'s weights; return all records.

        ``chain`` gives the link index and step count of the record.
        """
        if lora:
            self._record_chain(chain)
        else:
            import torch

            with torch.no_grad():
                current = {name: m.weight for name, m in model.named_modules() if name in self.initial}
                self._append(chain.link, chain.step_count,
                             {name: (w.detach().float().cpu() - self.initial[name]).numpy()
                              for name, w in current.items()})
        return self.records

    def _record_chain(self, chain) -> None:
        import torch

        with torch.no_grad():
            updates = {}
            for site in chain.sites:
                name = site.name.removeprefix("base_model.model.")
                if name in self.initial:
                    w = site.weight.detach().float().cpu() + site.delta().cpu()
                    updates[name] = (w - self.initial[name]).numpy()
        self._append(chain.link, chain.step_count, updates)

    def _append(self, link: int, step: int, updates: dict[str, np.ndarray]) -> None:
        self.records.append({"link": int(link), "step": int(step),
                             "sites": {name: rank_summary(x).to_dict() for name, x in sorted(updates.items())}})


def summarise_records(records: list[dict]) -> list[dict]:
    """Per record (link), the median and largest numerical rank and the median stable rank over the matrices."""
    out = []
    for r in records:
        num = [s["numerical_rank"] for s in r["sites"].values()]
        stable = [s["stable_rank"] for s in r["sites"].values()]
        out.append({"link": r["link"], "step": r["step"], "matrices": len(num),
                    "numerical_rank_median": float(np.median(num)) if num else None,
                    "numerical_rank_max": int(max(num)) if num else None,
                    "stable_rank_median": float(np.median(stable)) if stable else None})
    return out
