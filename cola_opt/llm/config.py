"""The fine-tuning configuration: one typed dataclass, mapped one to one onto the CLI.

Each field carries its help text, unit and role in ``metadata``; :mod:`cola_opt.llm.cli`
builds its options from them, so the two cannot drift apart. The roles:

- ``fingerprint`` (default ``True``): the field can change the trained weights or the
  numbers reported, so an earlier checkpoint, result or grid line counts as the same run
  only if it is equal. ``False`` for where and how a run goes (device, output folders,
  progress, checkpoints, evaluation batch size, exports), and for ``data_dir``: the data
  actually drawn is fingerprinted itself (:meth:`cola_opt.llm.tasks.Splits.fingerprint`).
- ``resumable`` (default: ``not fingerprint``): a resumed run, or a finished run read
  back, may differ in it (:data:`RESUMABLE_CHANGES`). ``nonfinite`` is resumable (to
  skip the step that stopped a run); ``export_links`` is not (the links written before
  a resume would be missing).
- ``grid``: ``"shared"`` (an option of ``cola-opt grid``, shared by every run),
  ``"per_run"`` (set per cell by the grid) or ``"none"`` (not a grid option: the grid
  does not export).
- ``late``: added after grids were fingerprinted; left out of the fingerprint while it
  keeps the behaviour of the time before it existed (``before``, by default the field's
  default), so old grids still resume, and a grid that uses the new behaviour does not
  take old runs for its own.

The checks of :meth:`FinetuneConfig.validate` live in :mod:`cola_opt.llm.config_checks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .config_checks import RESUME_MODES, USER_TASK_OPTIONS, check_chain_length, validate_config
from .lora import LoraSettings
from .methods import Method, get_method
from .precision import resolve_autocast
from .tasks import UserData

__all__ = ["RESUMABLE_CHANGES", "RESUME_MODES", "USER_TASK_OPTIONS", "FinetuneConfig", "check_chain_length",
           "field_roles", "with_late_defaults"]


_DEFAULT = object()


def _f(default, help: str, *, fingerprint: bool = True, resumable: bool | None = None, grid: str = "shared",
       late: bool = False, before=_DEFAULT):
    roles = {"fingerprint": fingerprint, "resumable": not fingerprint if resumable is None else resumable,
             "grid": grid, "late": late, "before": default if before is _DEFAULT else before}
    return field(default=default, metadata={"help": help, **roles})


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs. Defaults follow COLA's paper where it speaks.

    Raises:
        ValueError: from :meth:`validate`, naming the bad value.
    """

    task: str = _f("wsc", "task name (wsc, rte, ...), or for your own data text, completion or classification with "
                   "--train-file (docs/data.md)", grid="per_run")
    model: str = _f(
        "smollm2-135m", "built-in model (smollm2-135m, gemma3-270m), local model directory, or hub id (e.g. facebook/opt-1.3b)"
    )
    data_dir: str | None = _f(
        None, "folder in the official release layout; default: $COLA_DATA_DIR, then ../shared/data/<benchmark>, then HF",
        fingerprint=False,
    )
    method: str = _f("cola", "zero-shot, lora (chain length 1), cola, relora (the chain with ReLoRA's optimizer "
                     "pruning and jagged cosine LR), galore (GaLore on the target weights, no LoRA), or full (full "
                     "fine-tuning, no LoRA)", grid="per_run")
    seed: int = _f(0, "seed for sampling, initialisation and data order", grid="per_run")
    n_train: int = _f(1000, "training examples drawn from the train split (examples; MeZO protocol)")
    n_dev: int = _f(500, "dev examples: the last n_dev of the train-split draw (examples)")
    n_test: int = _f(1000, "test examples drawn from the validation split, or all of it if smaller (examples)")
    epochs: int = _f(5, "passes over the training examples (epochs; the paper's budget is 5)")
    max_steps: int | None = _f(None, "stop after this many optimizer steps instead (steps; overrides epochs)")
    batch_size: int = _f(8, "examples per micro-batch (examples)")
    bucket_by_length: bool = _f(
        True, "group training examples of similar length into micro-batches (less padding), shuffled within and "
        "across buckets; false: a plain shuffle per epoch", late=True, before=False,
    )
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    lr: float = _f(5e-4, "peak learning rate of the optimizer (per step); its schedule: --lr-schedule", grid="per_run")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_steps: int = _f(0, "linear warm-up of the learning rate (optimizer steps)")
    max_grad_norm: float = _f(1.0, "clip the gradient norm to this (0 = off)")
    chain_length: int = _f(3, "links in the chain for method cola; knots evenly spaced (links)", grid="per_run")
    knot_steps: tuple[int, ...] | None = _f(
        None, "explicit knot steps, comma separated (optimizer steps; overrides chain_length)", grid="per_run"
    )
    rank: int = _f(8, "LoRA rank r of each link")
    link_ranks: tuple[int, ...] | None = _f(
        None, "rank of each link for method cola, comma separated; the first must equal --rank (step-down ablation: 8,4)",
        grid="per_run",
    )
    lora_alpha: float = _f(16.0, "LoRA alpha; scaling = lora_alpha / rank")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input (probability)")
    target_modules: tuple[str, ...] = _f(("q_proj", "v_proj"), "modules to adapt, comma separated (name suffixes)")
    bias: str = _f("none", "PEFT bias: none, all or lora_only (the paper's OPT runs train biases)")
    optimizer_reset: str = _f("full", "optimizer state at a knot of method cola: full, keep, prune:<ratio>[:random]")
    relora_reset: str = _f(
        "prune:0.99", "optimizer state at a knot of method relora: prune:<ratio>[:random], keep or full (ReLoRA's: "
        "prune:0.99, the 99 in 100 smallest entries of each state tensor zeroed)", late=True,
    )
    lr_schedule: str | None = _f(
        None, "linear (warm-up, then linear decay to 0; COLA) or jagged-cosine (warm-up, cosine to 0.1 x lr, re-warmed "
        "from 0 after every knot; ReLoRA); none: the method's (jagged-cosine for relora, linear otherwise)", late=True,
    )
    restart_warmup_steps: int | None = _f(
        None, "with jagged-cosine: re-warm-up after each knot (optimizer steps; none: a twentieth of the shortest link)",
        late=True,
    )
    galore_rank: int = _f(128, "method galore: rank of the gradient projection (GaLore's r)", late=True)
    galore_update_proj_gap: int = _f(
        200, "method galore: optimizer steps between two SVDs of the gradient (GaLore's T)", late=True
    )
    galore_scale: float = _f(0.25, "method galore: factor on the projected-back update (GaLore's alpha)", late=True)
    galore_train_others: bool = _f(
        False, "method galore: also train every weight outside target_modules with plain Adam (GaLore's scripts); "
        "false: freeze them", late=True,
    )
    dev_each_epoch: bool = _f(
        True, "evaluate on dev after each epoch; false: only after the last step (and every --eval-every steps), "
        "which saves the evaluations of a long grid whose LR choice reads the final dev result", late=True,
    )
    eval_every: int = _f(
        0, "also evaluate on dev every this many optimizer steps, not only after each epoch (optimizer steps; "
        "0 = after each epoch only): a curve for runs shorter than an epoch", late=True,
    )
    max_length: int = _f(
        256, "most tokens per prompt plus answer, longer prompts lose their start, counted and warned about; for "
        "--task text, tokens per packed block (tokens; with SmolLM2, 256 cuts 75-78%% of MultiRC prompts and a few "
        "of RTE and CB; 1024 cuts none of the release files measured, and costs short tasks nothing, as batches pad "
        "to their longest item: docs/tasks.md)",
    )
    eval_batch_size: int = _f(16, "examples per evaluation batch (examples)", fingerprint=False)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", fingerprint=False)
    threads: int | str = _f(
        "auto", "torch threads of the run: an integer >= 1, or auto: the cores that no other runnable work wants, at "
        "least 1 (re-counted every 30 s; 1 on a 2-core machine with a busy neighbour, where 2 threads ran 20-100x "
        "slower); recorded in results.json (threads)", fingerprint=False,
    )
    dtype: str = _f("fp32", "weight dtype: fp32, bf16 or fp16")
    autocast: str = _f(
        "auto", "autocast dtype for forward passes: auto (bf16 where the device computes it natively: CUDA with "
        "bf16, a CPU with AVX512-BF16 or AMX; else none), none, bf16 or fp16; validate() records the choice",
    )
    fp32_master: bool = _f(
        False, "keep an fp32 master copy of every LoRA-adapted weight and merge each knot into it (for --dtype bf16 "
        "or fp16: no rounding drift across knots; 4 bytes per adapted weight entry)", late=True,
    )
    output_dir: str = _f("runs", "folder for results (one subfolder per run)", fingerprint=False, grid="per_run")
    progress: bool = _f(True, "show progress bars and a line per knot and per epoch (warnings print either way)",
                        fingerprint=False, grid="per_run")
    checkpoint_every: int = _f(
        0, "write a resumable checkpoint to <run folder>/checkpoint every N optimizer steps and after the last "
        "(optimizer steps; 0 = off)", fingerprint=False,
    )
    resume: str = _f(
        "auto", "auto: continue from the run folder's checkpoint if there is one; require: fail if there is none; "
        "never: delete it and start over", fingerprint=False,
    )
    nonfinite: str = _f(
        "stop", "on a NaN/inf loss or gradient: stop (write a checkpoint of the last finite step, then raise) or "
        "skip (drop that step's update; the step still counts for the LR schedule and the knots)",
        resumable=True, late=True,
    )
    max_consecutive_skips: int = _f(
        10, "with --nonfinite skip: stop with an error at this many non-finite steps in a row (optimizer steps; "
        "a diverged run)", resumable=True, late=True,
    )
    update_rank: bool = _f(
        False, "measure rank(W - W0) of every adapted matrix after each link and at the end (numerical rank at 1%% of "
        "the largest singular value, stable rank) into results.json; keeps an fp32 copy of W0 of the target "
        "matrices; not with checkpoints", fingerprint=False, resumable=False,  # a result without ranks is not reused
    )
    export_dir: str | None = _f(
        None, "after training, write the merged model here: an HF model directory with chain.json (none = off)",
        fingerprint=False, grid="none",
    )
    export_links: str | None = _f(
        None, "folder in which each link is saved as a PEFT adapter (link-00, link-01, ...) just before it is "
        "merged (none = off)", fingerprint=False, resumable=False, grid="none",
    )
    # users' own data (docs/data.md): --task text, completion or classification. The paths are not fingerprinted
    # (the examples drawn are, Splits.fingerprint); the rest is late, so grids from before them keep their fingerprint.
    train_file: str | None = _f(
        None, "your training data for --task text, completion or classification: a JSONL, CSV or parquet file, a folder "
        "of text files, or hf:<dataset>[:<config>][@<split>]", fingerprint=False,
    )
    dev_file: str | None = _f(None, "your dev data, in the same forms; none: the last n_dev of the training draw",
                              fingerprint=False)
    test_file: str | None = _f(None, "your test data, in the same forms; none: n_test records of --train-file held out "
                               "by seed", fingerprint=False)
    text_field: str = _f("text", "the records' field holding a document (--task text; a folder's files are documents)",
                         late=True)
    prompt_field: str = _f("prompt", "the records' field holding the prompt (unless --template)", late=True)
    completion_field: str = _f("completion", "the records' field holding the completion (--task completion)", late=True)
    label_field: str = _f("label", "the records' field holding the label: a candidate or its 0-based index "
                          "(--task classification)", late=True)
    template: str | None = _f(
        None, "the prompt as a format string over the records' fields, \\n for a newline, e.g. "
        "'{premise}\\nQuestion: {hypothesis}?\\nAnswer:' (none: --prompt-field)", late=True,
    )
    candidates: tuple[str, ...] | None = _f(
        None, "label words of --task classification in label order, comma separated (e.g. No,Yes)", late=True,
    )
    label_prefix: str = _f(" ", "text put between the prompt and each label word, a space by default "
                           "(--task classification)", late=True)
    chat_template: bool = _f(
        False, "render each pair as a user turn and the assistant's answer in the tokenizer's chat template "
        "(--task completion)", late=True,
    )
    text_glob: str = _f("**/*.txt", "which files of a data folder are documents (a glob relative to the folder)",
                        late=True)

    def validate(self) -> None:
        """Check every field that can be checked without data or a model; record what will run.

        See :func:`cola_opt.llm.config_checks.validate_config` (which fields it replaces by
        what they mean, such as ``autocast="auto"`` by the precision that runs).

        Raises:
            ValueError: naming the first bad value.
        """
        validate_config(self)

    def user_data(self) -> UserData:
        """The user-data part of the config (:class:`~cola_opt.llm.tasks.user.UserData`), for a user task."""
        return UserData(task=self.task, **{name: getattr(self, name) for name in USER_TASK_OPTIONS
                                           if name != "chat_template"})

    @property
    def method_type(self) -> Method:
        """The :class:`~cola_opt.llm.methods.Method` of :attr:`method`: whether it trains, has LoRA, ties knots.

        Raises:
            ValueError: on an unknown method name.
        """
        return get_method(self.method)

    @property
    def schedule(self) -> str:
        """The LR schedule the run uses: :attr:`lr_schedule`, or the method's when that is ``None``."""
        return self.lr_schedule or self.method_type.lr_schedule

    @property
    def knot_reset(self) -> str:
        """The optimizer reset at a knot: ``relora_reset`` for relora, ``optimizer_reset`` otherwise (the method's field)."""
        return getattr(self, self.method_type.reset_field)

    @property
    def run_dir(self) -> Path:
        """The run folder ``<output_dir>/<task>_<method>_s<seed>``: ``results.json`` and the checkpoint."""
        return Path(self.output_dir) / f"{self.task}_{self.method}_s{self.seed}"

    def lora_settings(self) -> LoraSettings:
        """The LoRA part of the config."""
        return LoraSettings(
            r=self.rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.target_modules,
            bias=self.bias,
        )

    def replace(self, **changes) -> FinetuneConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict of all fields."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, saved: dict) -> FinetuneConfig:
        """The config of a :meth:`to_dict` (lists back to tuples; late fields it lacks at their ``before`` value).

        Raises:
            ValueError: naming a key that is not a field.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown:
            raise ValueError(f"not FinetuneConfig fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in with_late_defaults(saved).items()})

    def shared_settings(self) -> dict:
        """The fingerprinted settings that a grid's runs share (role ``grid="shared"``), as in :meth:`to_dict`.

        A ``late`` field is left out while at its ``before`` value (module docstring).
        """
        values = self.to_dict()
        values["autocast"] = resolve_autocast(self.autocast, self.device)  # "auto" if never validated
        return {f.name: values[f.name] for f in dataclasses.fields(self)
                if f.metadata["fingerprint"] and f.metadata["grid"] == "shared"
                and not (f.metadata["late"] and values[f.name] == f.metadata["before"])}


def field_roles(role: str, value=True) -> tuple[str, ...]:
    """The names of the :class:`FinetuneConfig` fields whose metadata ``role`` equals ``value``.

    ``field_roles("resumable")``: the fields a resume may change; ``field_roles("grid",
    "per_run")``: the fields the grid sets per run. Roles: module docstring.

    Raises:
        ValueError: on an unknown role.
    """
    if role not in ("fingerprint", "resumable", "grid", "late"):
        raise ValueError(f"role {role!r} must be fingerprint, resumable, grid or late")
    return tuple(f.name for f in dataclasses.fields(FinetuneConfig) if f.metadata[role] == value)


def with_late_defaults(saved: dict) -> dict:
    """A config dict (:meth:`FinetuneConfig.to_dict`) written before some ``late`` fields existed, completed: each
    late field it lacks takes its ``before`` value, the behaviour of that time. A checkpoint or ``results.json`` from
    then compares equal to today's config exactly when today's run trains the same way."""
    out = dict(saved)
    for f in dataclasses.fields(FinetuneConfig):
        if f.metadata["late"] and f.name not in out:
            before = f.metadata["before"]
            out[f.name] = list(before) if isinstance(before, tuple) else before
    return out


# fields a resumed run (or a finished run read back) may change: they do not change the trained weights
RESUMABLE_CHANGES = field_roles("resumable")
