"""The capacity study's report from grid records alone: the numbers of its two tables, checked by hand.

Synthetic records (3 seeds of LoRA r=8 and r=64, COLA r=8 with 4 links and full fine-tuning on 4
exact-match test items) stand in for a finished study; every figure the report prints is
worked out here from the items.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from capacity_report import write_capacity_report

# per method and seed: the 0/1 exact match of 4 test keys, and the test loss
ITEMS = {
    "lora-r8": ([[0, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], [2.0, 1.9, 2.1]),
    "cola4-r8": ([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], [1.5, 1.3, 1.6]),
    "full": ([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], [0.1, 0.2, 0.3]),
    "lora-r64": ([[0, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0]], [2.0, 1.5, 1.8]),  # ties LoRA r=8 at seed 0
}
LRS = {"lora-r8": 3e-3, "cola4-r8": 1e-3, "full": 1e-4, "lora-r64": 3e-3}


def _record(method, seed, items, loss, lr):
    rec = {"run_id": f"completion/{method}/s{seed}/lr{lr:g}", "task": "completion", "method": method, "seed": seed,
           "lr": lr, "error": None, "metric": "exact_match", "test_metric": float(np.mean(items)), "dev_metric": 0.0,
           "test_items": items, "test_loss": loss, "trainable_parameters": 1000, "step_seconds_median": 1.0,
           "dev_curve": [[10, 0.0], [20, float(np.mean(items))]]}
    if method.startswith("cola"):
        rec["update_rank"] = [{"link": k, "numerical_rank_median": 8.0 * (k + 1), "stable_rank_median": 1.0 + k}
                              for k in range(4)]
    return rec


@pytest.fixture
def study(tmp_path):
    grid = tmp_path / "grid"
    grid.mkdir()
    lines = []
    for m, (items, losses) in ITEMS.items():
        for s in range(3):
            lines.append(json.dumps(_record(m, s, items[s], losses[s], LRS[m])))
        lines.append(json.dumps(_record(m, 0, [0, 0, 0, 0], 9.0, LRS[m] * 10)))  # a search run at another LR
    (grid / "runs.jsonl").write_text("\n".join(lines) + "\n")
    (grid / "summary.json").write_text(json.dumps({"lrs": {f"completion/{m}": lr for m, lr in LRS.items()}}))
    return tmp_path


def test_the_tables_hold_the_hand_worked_figures(study):
    text = write_capacity_report(study)
    rows = {r["method"]: r for r in json.loads((study / "summary.json").read_text())["rows"]}
    em = {m: 100 * np.array([np.mean(x) for x in items]) for m, (items, _) in ITEMS.items()}
    cola = rows["cola4-r8"]
    assert cola["mean"] == pytest.approx(em["cola4-r8"].mean()) and cola["std"] == pytest.approx(em["cola4-r8"].std(ddof=1))
    assert cola["diff"] == pytest.approx((em["cola4-r8"] - em["lora-r8"]).mean())
    assert cola["t_p"] == pytest.approx(stats.ttest_rel(em["cola4-r8"], em["lora-r8"]).pvalue)
    closed = (em["cola4-r8"].mean() - em["lora-r8"].mean()) / (em["full"].mean() - em["lora-r8"].mean())
    assert cola["gap_closed"] == pytest.approx(closed) and cola["wins"] == 3
    assert cola["rank_growth"] == [8, 16, 24, 32] and cola["rank_final"] == 32
    lo, hi = cola["boot"]
    assert lo <= cola["diff"] <= hi
    assert "| cola4-r8 | 0.001 | 50.0 ± 25.0 | +41.7 | 0.038 |" in text and "| 50% |" in text

    losses = {r["method"]: r for r in json.loads((study / "summary.json").read_text())["loss_rows"]}
    loss = {m: np.array(v) for m, (_, v) in ITEMS.items()}
    assert losses["cola4-r8"]["diff"] == pytest.approx((loss["cola4-r8"] - loss["lora-r8"]).mean())
    assert losses["cola4-r8"]["t_p"] == pytest.approx(stats.ttest_rel(loss["cola4-r8"], loss["lora-r8"]).pvalue)
    assert losses["cola4-r8"]["gap_closed"] == pytest.approx(
        (loss["cola4-r8"].mean() - 2.0) / (loss["full"].mean() - 2.0)) and losses["cola4-r8"]["wins"] == 3
    assert "| cola4-r8 | 1.467 ± 0.153 | -0.533 |" in text
    assert rows["lora-r64"]["wins"] == losses["lora-r64"]["wins"] == 2  # a tie is not a win
    assert "gap_closed" not in rows["lora-r64"] and "diff" not in rows["lora-r8"]
    assert (study / "curves.png").stat().st_size > 1000
