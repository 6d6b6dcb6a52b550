"""The method type, the grid's method names, and the roles of the config fields."""

import pytest

from cola_opt.llm.config import RESUMABLE_CHANGES, FinetuneConfig, field_roles
from cola_opt.llm.methods import METHODS, get_method, grid_method


def test_what_each_method_implies():
    assert [(m.name, m.trains, m.lora, m.knots, m.galore) for m in METHODS.values()] == [
        ("zero-shot", False, False, False, False), ("lora", True, True, False, False), ("cola", True, True, True, False),
        ("full", True, False, False, False), ("relora", True, True, True, False), ("galore", True, False, False, True)]
    assert FinetuneConfig(method="full").method_type is METHODS["full"]
    with pytest.raises(ValueError, match=r"method 'cola3' must be one of \('zero-shot', 'lora', 'cola', 'full', "
                                         r"'relora', 'galore'\)"):
        get_method("cola3")


def test_grid_method_names_and_labels():
    assert grid_method("cola3").changes(8) == {"method": "cola", "chain_length": 3, "link_ranks": None,
                                                "knot_steps": None}
    assert grid_method("stepdown-r4").changes(8) == {"method": "cola", "chain_length": 2, "link_ranks": (8, 4)}
    labels = [grid_method(m).label(8) for m in ("zero-shot", "lora", "full", "cola2", "stepdown-r6")]
    assert labels == ["zero-shot", "LoRA", "full fine-tuning", "COLA (2 links)", "COLA step-down r=8→6"]
    assert grid_method("stepdown-r6").stepdown and not grid_method("cola2").stepdown
    for bad in ("cola", "cola1", "stepdown-r0", "LoRA"):
        with pytest.raises(ValueError, match=f"unknown grid method '{bad}'"):
            grid_method(bad)


def test_field_roles_give_the_lists_that_were_kept_by_hand():
    assert set(RESUMABLE_CHANGES) == {"data_dir", "device", "eval_batch_size", "output_dir", "progress",
                                      "checkpoint_every", "resume", "nonfinite", "export_dir",
                                      "max_consecutive_skips", "train_file", "dev_file", "test_file", "threads"}
    assert set(field_roles("grid", "per_run")) == {"task", "method", "seed", "lr", "chain_length", "knot_steps",
                                                   "link_ranks", "output_dir", "progress"}
    assert set(field_roles("grid", "none")) == {"export_dir", "export_links"}
    assert set(field_roles("late")) == {"nonfinite", "max_consecutive_skips", "bucket_by_length", "fp32_master",
                                        "text_field", "prompt_field", "completion_field", "label_field", "template",
                                        "candidates", "label_prefix", "chat_template", "text_glob", "relora_reset",
                                        "lr_schedule", "restart_warmup_steps", "galore_rank", "galore_update_proj_gap",
                                        "galore_scale", "galore_train_others", "eval_every", "dev_each_epoch"}
    shared = FinetuneConfig().shared_settings()
    assert "nonfinite" not in shared and FinetuneConfig(nonfinite="skip").shared_settings()["nonfinite"] == "skip"
    assert not {"data_dir", "device", "eval_batch_size", "checkpoint_every", "resume", "lr", "task"} & set(shared)
    with pytest.raises(ValueError, match="role 'weights'"):
        field_roles("weights")


def test_robustness_doc_names_every_resumable_field():
    """docs/robustness.md section 5 lists what a resume may change; it had fallen behind the metadata once."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    section = text[text.index("## 5. Resume"):text.index("## 6.")]
    assert [f for f in RESUMABLE_CHANGES if f"`{f}`" not in section] == []
