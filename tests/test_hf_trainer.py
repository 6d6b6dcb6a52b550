"""COLA through transformers.Trainer: knots at the scheduled steps, the function kept across each."""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

from cola_opt.chain.lr_schedules import jagged_cosine_schedule
from cola_opt.llm.hf import ColaCallback


def _model(target_modules=("q_proj", "v_proj")):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    return get_peft_model(LlamaForCausalLM(cfg), config)


def _dataset(n=24, length=12):
    """Four token sequences, repeated: a tiny model can learn them within a few steps."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (4, length), generator=g).repeat(n // 4, 1)
    return [{"input_ids": x, "labels": x} for x in ids]


def _args(tmp_path, **kw):
    return TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=5e-2, report_to=[], save_strategy="no", logging_steps=1,
                             disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=0, **kw)


class KnotProbe(TrainerCallback):
    """Checks each knot from inside the Trainer: same logits before and after, state emptied."""

    def __init__(self, cola):
        self.cola, self.diffs, self.steps, self.state_sizes, self.merged = cola, [], [], [], []
        self.ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model
        self.cola.chain.add_knot_hook(self.before, when="before")
        self.cola.chain.add_knot_hook(self.after, when="after")

    @torch.no_grad()
    def _logits(self):
        was = self.model.training
        self.model.eval()  # lora_dropout=0.1: compare functions, not dropout masks
        out = self.model(input_ids=self.ids).logits
        self.model.train(was)
        return out

    def before(self, chain, _):
        self._before = self._logits()
        self._w = [s.weight.clone() for s in chain.sites]
        self._delta = [s.delta() for s in chain.sites]

    def after(self, chain, record):
        self.diffs.append(float((self._logits() - self._before).abs().max()))
        self.steps.append(record.step)
        self.merged.append(all(torch.equal(s.weight, w + d) for s, w, d in zip(chain.sites, self._w, self._delta)))
        assert min(float(d.abs().max()) for d in self._delta) > 0  # every link really moved
        self.state_sizes.append(sum(len(chain.optimizer.state.get(p, {})) for p in chain.factor_parameters()))


@pytest.mark.parametrize("targets,n_sites", [(("q_proj", "v_proj"), 4), (("embed_tokens", "q_proj"), 3)])
def test_trainer_ties_knots_and_keeps_the_function(targets, n_sites, tmp_path):
    """Issue 9, item 4: LoRA on ``embed_tokens`` (``lora.Embedding``) is a site of the Trainer route too."""
    model = _model(targets)
    cola = ColaCallback(chain_length=3, guard="skip")
    probe = KnotProbe(cola)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(), callbacks=[cola, probe])
    trainer.train()
    # 2 layers x (q_proj, v_proj), or the embedding and 2 q_proj: no LoRA layer skipped
    assert len(cola.chain.sites) == n_sites
    assert sum(s.name.endswith("embed_tokens") for s in cola.chain.sites) == ("embed_tokens" in targets)
    assert probe.steps == [2, 4] and [k.step for k in cola.chain.knots] == [2, 4]
    assert cola.chain.link == 2 and cola.chain.step_count == 6
    assert max(probe.diffs) < 1e-5  # the function is kept across each knot
    assert probe.merged == [True, True]  # the base moved by exactly the link's delta
    assert probe.state_sizes == [0, 0]  # the optimizer state of every factor was emptied
    assert cola.chain.optimizer is trainer.optimizer.optimizer  # the Trainer's own AdamW
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.1, losses
    assert cola.guard.skipped == 0


def test_trainer_with_jagged_cosine_and_a_skipped_nonfinite_step(tmp_path):
    model = _model()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-2)
    sched = jagged_cosine_schedule(opt, 6, [3], restart_warmup_steps=1, min_lr_ratio=0.0)
    cola = ColaCallback(knot_steps=[3], guard="skip")

    class Poison(TrainerCallback):  # a non-finite gradient at step 2
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            if state.global_step + 1 == 2:
                next(p for p in model.parameters() if p.requires_grad).grad.view(-1)[0] = float("nan")

    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_dataset(),
                      optimizers=(opt, sched), callbacks=[Poison(), cola])
    trainer.train()
    assert [k.step for k in cola.chain.knots] == [3]
    envelope = 0.5 * (1 + math.cos(math.pi * 2 / 6))  # the cosine after 2 steps of 6: step 3's LR
    assert cola.chain.knots[0].lr == [pytest.approx(5e-2 * envelope)]
    assert opt.param_groups[0]["lr"] == 0.0  # the envelope's end
    assert cola.guard.skipped == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one"),
    ({"knot_steps": [2], "chain_length": 2}, "exactly one"),
    ({"chain_length": 0}, "chain_length"),
    ({"knot_steps": [3, 2]}, "increasing"),
    ({"chain_length": 2, "reset": "zero"}, "optimizer reset"),
    ({"chain_length": 2, "guard": "ignore"}, "non-finite policy"),
])
def test_callback_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColaCallback(**kwargs)


def test_knot_beyond_the_run_is_refused_when_training_begins(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=_dataset(),
                      callbacks=[ColaCallback(knot_steps=[6])])
    with pytest.raises(ValueError, match="knots must lie in \\[1, 5\\]"):
        trainer.train()
