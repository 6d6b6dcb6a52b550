"""Knots with 2 processes on gloo: DDP replicas stay bit-identical; FSDP2 merges under full values.

Each test spawns 2 CPU processes (torch.multiprocessing) and compares them with a
single-process run of the same global batches. About 10-20 s each on 2 cores.
"""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import LlamaConfig, LlamaForCausalLM

from cola_opt import ResidualLowRankOptimizer
from cola_opt.llm.guard import NonFiniteGuard
from cola_opt.llm.lora import LoraSettings, inject_lora, lora_sites

pytestmark = pytest.mark.slow  # 2 spawned processes each; about 15 s per test on 2 cores

KNOTS, STEPS, BATCH, LENGTH = (3, 6), 8, 8, 12


def _peft_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return inject_lora(LlamaForCausalLM(cfg), LoraSettings(r=4, lora_alpha=8))


def _batch(step, rank=0, world=1):
    """The global batch of a step (two alternating ones, so the loss can fall), and this process's share."""
    ids = torch.randint(0, 128, (BATCH, LENGTH), generator=torch.Generator().manual_seed(100 + step % 2))
    share = BATCH // world
    return ids[rank * share:(rank + 1) * share]


def _flat(model):
    from cola_opt.chain.sites import full_tensor

    return torch.cat([full_tensor(p.detach()).flatten() for p in model.parameters()])


def _single_process_run():
    model = _peft_model()
    chain = ResidualLowRankOptimizer(lora_sites(model), lr=1e-2, knot_steps=KNOTS)
    losses = []
    for step in range(STEPS):
        ids = _batch(step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        chain.step()
        chain.zero_grad()
        losses.append(float(loss))
    return losses, _flat(model)


def _worker(rank, world, port, mode, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    # a collective that waits 120 s is an error here (the default, 30 min, lets a stuck rank stall the suite)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        model = _peft_model()
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapped = DDP(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh("cpu", (world,))
            for layer in model.base_model.model.model.layers:
                fully_shard(layer, mesh=mesh)
            wrapped = fully_shard(model, mesh=mesh)
        # built after wrapping: fully_shard replaces the Parameters with DTensor shards
        sites = lora_sites(model)
        chain = ResidualLowRankOptimizer(sites, lr=1e-2, knot_steps=KNOTS)
        merged_exactly, probe = [], []  # probe: (W, delta) of each site, taken just before the knot

        def before(chain, _):
            from cola_opt.chain.sites import full_tensor

            probe[:] = [(full_tensor(s.weight.detach()).clone(), s.delta()) for s in chain.sites]

        def after(chain, _):
            from cola_opt.chain.sites import full_tensor

            merged_exactly.append(len(probe) == len(chain.sites) and all(
                torch.equal(full_tensor(s.weight.detach()), w + d) for s, (w, d) in zip(chain.sites, probe)))

        chain.add_knot_hook(before, when="before")
        chain.add_knot_hook(after, when="after")
        losses, identical, guarded = [], [], []
        guard = NonFiniteGuard("stop")
        for step in range(STEPS):
            ids = _batch(step, rank, world)
            loss = wrapped(input_ids=ids, labels=ids).loss
            loss.backward()
            guarded.append(guard.check(loss, model.named_parameters(), step=step + 1))  # (sharded) gradients
            chain.step()
            chain.zero_grad()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(float(mean) / world)
            if step + 1 in KNOTS or step + 1 == STEPS:
                mine = _flat(model)
                theirs = [torch.empty_like(mine) for _ in range(world)]
                dist.all_gather(theirs, mine)
                identical.append(all(torch.equal(t, mine) for t in theirs))
        sharded = [type(s.weight).__name__ for s in sites]
        # the guard agrees across processes: a NaN loss on rank 1 only makes both skip
        verdict = NonFiniteGuard("skip").check(float("nan") if rank == 1 else 1.0, [], step=STEPS + 1)
        final = _flat(model)
        overflow_refused_everywhere = None
        if mode == "fsdp2":
            overflow_refused_everywhere = _overflow_on_one_shard(chain, sites, rank)
        result = {"losses": losses, "identical": identical, "merged_exactly": merged_exactly,
                  "knots": [k.step for k in chain.knots], "final": final, "sharded": sharded,
                  "guard": verdict, "guarded": guarded, "overflow_refused": overflow_refused_everywhere}
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@torch.no_grad()
def _overflow_on_one_shard(chain, sites, rank):
    """An update that overflows fp32 on rank 1's shard only: both processes must refuse the knot."""
    from cola_opt import NonFiniteUpdateError
    from cola_opt.chain.sites import local_part

    site = sites[0]
    # delta = scaling * sum_k B_ik A_kj = 2 * 4 * 1e18 * 1.25e19 = 1e38 everywhere: finite
    site.lora_B.copy_(local_part(torch.full(site.lora_B.shape, 1e18), site.lora_B))
    site.lora_A.copy_(local_part(torch.full(site.lora_A.shape, 1.25e19), site.lora_A))
    if rank == 1:
        site.weight.to_local()[0, 0] = 3e38  # + 1e38 > fp32 max, on this shard only
    before = [s.weight.to_local().clone() for s in sites]
    try:
        chain.tie_knot()
    except NonFiniteUpdateError:
        refused = True
    else:
        refused = False
    unchanged = all(torch.equal(s.weight.to_local(), b) for s, b in zip(sites, before))
    return refused and unchanged


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(mode, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), mode, str(tmp_path)), nprocs=2, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]


@pytest.fixture(scope="module")
def reference():
    return _single_process_run()


def test_ddp_replicas_stay_bit_identical_and_match_one_process(tmp_path, reference):
    ref_losses, ref_final = reference
    results = _spawn("ddp", tmp_path)
    for res in results:
        assert res["knots"] == list(KNOTS)
        assert res["identical"] == [True, True, True]  # after each knot and at the end
        assert res["merged_exactly"] == [True, True]
        assert res["guard"] is False and all(res["guarded"])
    assert torch.equal(results[0]["final"], results[1]["final"])
    # 2 x 4 sequences with averaged gradients = 8 sequences in one process, up to float rounding
    torch.testing.assert_close(torch.tensor(results[0]["losses"]), torch.tensor(ref_losses), atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0]["final"], ref_final, atol=1e-5, rtol=0)
    assert ref_losses[-1] < ref_losses[0]


def test_fsdp2_merges_sharded_weights_under_full_values(tmp_path, reference):
    ref_losses, ref_final = reference
    results = _spawn("fsdp2", tmp_path)
    for res in results:
        assert set(res["sharded"]) == {"DTensor"}  # the weights really were shards
        assert res["knots"] == list(KNOTS)
        assert res["merged_exactly"] == [True, True]  # W_full == W_full_before + delta, bit for bit
        assert res["identical"] == [True, True, True]  # every process sees the same full model
        assert res["guard"] is False and all(res["guarded"])
        assert res["overflow_refused"] is True  # rank 1's shard overflows: both refuse, nothing changes
    torch.testing.assert_close(torch.tensor(results[0]["losses"]), torch.tensor(ref_losses), atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0]["final"], ref_final, atol=1e-5, rtol=0)
