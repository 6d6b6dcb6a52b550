"""The built-in models (SmolLM2-135M, the default, and Gemma-3-270M; fetched from the package registry) on real WSC data."""

import pytest
import torch

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites
from cola_opt.llm.models import load_model
from cola_opt.llm.scoring import candidate_scores, classification_loss, encode_examples
from cola_opt.llm.tasks import get_task, sample_splits

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,arch,n_params,n_layers", [
    ("smollm2-135m", "LlamaForCausalLM", 134_515_008, 30),
    ("gemma3-270m", "Gemma3ForCausalLM", 268_098_176, 18),
])
def test_cola_steps_across_a_knot_on_wsc(name, arch, n_params, n_layers, super_glue_dir):
    torch.manual_seed(0)
    model, tok = load_model(name)
    assert type(model).__name__ == arch
    assert sum(p.numel() for p in model.parameters()) == n_params
    splits = sample_splits(get_task("wsc"), seed=0, n_train=16, n_dev=0, n_test=8, data_dir=super_glue_dir)
    train = encode_examples(tok, splits.train, 256)
    probe = encode_examples(tok, splits.test, 256)
    model = inject_lora(model, LoraSettings())
    sites = lora_sites(model)
    assert len(sites) == 2 * n_layers  # q_proj and v_proj in every layer
    chain = ResidualLowRankOptimizer(sites, lr=1e-3, knot_steps=[3])
    losses = []
    for step in range(4):
        batch = train[4 * step : 4 * step + 4]
        model.train()
        loss = classification_loss(candidate_scores(model, batch, tok.pad_token_id),
                                    torch.tensor([e.label for e in batch]))
        loss.backward()
        losses.append(loss.item())
        if step == 2:  # the knot is tied inside this step: record the function around it
            chain.optimizer.step()
            model.eval()
            with torch.no_grad():
                before = candidate_scores(model, probe, tok.pad_token_id)
                full_before = model(input_ids=torch.tensor([probe[0].prompt_ids])).logits
                with model.disable_adapter():  # what a lost merge would give
                    full_base = model(input_ids=torch.tensor([probe[0].prompt_ids])).logits
            assert float((full_base - full_before).abs().max()) > 1e-2  # so the check below can fail
            assert max(float(s.delta().abs().max()) for s in sites) > 0  # the link learned something
            chain.advance()
            assert chain.link == 1 and chain.knots[0].step == 3
            with torch.no_grad():
                after = candidate_scores(model, probe, tok.pad_token_id)
                full_after = model(input_ids=torch.tensor([probe[0].prompt_ids])).logits
            torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
            torch.testing.assert_close(full_after, full_before, atol=1e-3, rtol=1e-4)
            print("max |logit change| across the knot:", float((full_after - full_before).abs().max()),
                  "vs without the link:", float((full_base - full_before).abs().max()))
            assert all(len(chain.optimizer.state.get(p, {})) == 0 for p in chain.factor_parameters())
        else:
            chain.step()
        chain.zero_grad()
    assert all(torch.isfinite(torch.tensor(losses)))
