"""The documented Trainer example (docs/trainer.md) runs and exports a model that reloads."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "trainer_example.py"


def test_trainer_example_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("trainer_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--out", str(tmp_path), "--steps", "9"])
    assert out["knot_steps"] == [3, 6, 9]  # two scheduled knots, then the export's final merge
    assert out["max_logit_diff"] < 1e-5
    assert out["losses"][-1] < out["losses"][0]
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["link-00", "link-01", "link-02"]
