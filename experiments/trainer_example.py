"""COLA with the Hugging Face Trainer, end to end: train, tie knots, export.

A user's PEFT LoRA set-up, unchanged, plus one callback::

    python experiments/trainer_example.py --out /tmp/cola-example              # tiny random Llama, seconds
    python experiments/trainer_example.py --model smollm2-135m --steps 30 --out /tmp/cola-smol

``--model`` is ``tiny`` (a random 2-layer Llama, no download), a built-in name
(``smollm2-135m``), a local model directory or a hub id. The script trains a causal LM
on a few sentences with chain length 3, saves every link as a PEFT adapter, exports the
merged model, reloads it with ``AutoModelForCausalLM.from_pretrained`` and checks that
it computes the same logits as the trained chain.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from cola_opt.llm.export import export_merged
from cola_opt.llm.hf import ColaCallback

TEXTS = [
    "The chain of LoRA merges each low-rank link into the weights and starts a new one.",
    "A knot ties the link: merge, re-initialise the factors, reset the optimizer state.",
    "Frank-Wolfe takes a step towards the answer of a linear minimisation oracle.",
    "Residual learning fits what the previous links left unexplained.",
]


def load(model_name: str, seq: int):
    """``(model, tokenizer or None, examples)``: the model and a tiny training set of token ids."""
    if model_name == "tiny":
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
        model, tok = LlamaForCausalLM(cfg), None
        ids = torch.tensor([list(t.encode()[:seq]) for t in TEXTS])  # bytes as token ids
        mask = torch.ones_like(ids)
    else:
        from cola_opt.llm.models import load_model

        model, tok = load_model(model_name)
        enc = tok(TEXTS, max_length=seq, truncation=True, padding="max_length", return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)  # no loss on padding
    rows = zip(ids.repeat(4, 1), mask.repeat(4, 1), labels.repeat(4, 1))
    return model, tok, [{"input_ids": x, "attention_mask": m, "labels": y} for x, m, y in rows]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="COLA with transformers.Trainer: train, tie knots, export")
    p.add_argument("--model", default="tiny", help="'tiny', a built-in name, a local directory or a hub id")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps (>= 3 for chain length 3)")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seq", type=int, default=32, help="tokens per example")
    args = p.parse_args(argv)
    out = Path(args.out)

    model, tok, data = load(args.model, args.seq)
    # --- the user's PEFT set-up, as usual (COLA's paper: r=8, alpha=16 on q and v) ---
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    # --- COLA: one callback. Knots spread evenly over max_steps; links saved as adapters ---
    cola = ColaCallback(chain_length=3, reset="full", guard="skip", link_adapters_dir=out / "links")
    training = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=args.steps, per_device_train_batch_size=4,
        learning_rate=args.lr, lr_scheduler_type="linear", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=model, args=training, train_dataset=data, callbacks=[cola])
    trainer.train()

    probe = data[0]["input_ids"][None]
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=probe).logits
    merged = export_merged(cola.chain, model, out / "merged", tokenizer=tok, extra={"example": "trainer_example"})
    reloaded = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    with torch.no_grad():
        diff = float((reloaded(input_ids=probe).logits - expected).abs().max())
    record = json.loads((out / "merged" / "chain.json").read_text())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"knots at steps {[k['step'] for k in record['knots']]} (the last one: the export's final merge)")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; links saved: {sorted(p.name for p in (out / 'links').iterdir())}")
    print(f"merged model in {out / 'merged'}; reloaded logits differ by at most {diff:.2e}")
    del merged
    return {"knot_steps": [k["step"] for k in record["knots"]], "max_logit_diff": diff, "losses": losses}


if __name__ == "__main__":
    main()
