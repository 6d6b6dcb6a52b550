"""The run lock and the grid lock: one holder at a time, through filelock."""

import pytest
import torch
from filelock import FileLock

from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.locks import exclusive_lock
from cola_opt.llm.run_state import LOCK_FILE
from cola_opt.llm.trainer import finetune


def test_a_second_holder_is_refused_and_the_file_stays(tmp_path):
    path = tmp_path / "sub" / "lock"
    with exclusive_lock(path, "busy: held"), pytest.raises(RuntimeError, match="^busy: held$"), \
            exclusive_lock(path, "busy: held"):
        pass
    assert path.is_file()  # left in place for the next holder
    with exclusive_lock(path, "busy"):  # released: free again
        assert path.is_file()


def test_training_in_a_locked_run_folder_is_refused_before_any_step(tiny_model_dir, super_glue_dir, tmp_path,
                                                                     monkeypatch):
    cfg = FinetuneConfig(model=str(tiny_model_dir), task="wsc", data_dir=str(super_glue_dir), n_train=8, n_dev=0,
                         n_test=4, max_steps=2, batch_size=4, method="lora", autocast="none", progress=False,
                         checkpoint_every=1, output_dir=str(tmp_path))
    stepped = []
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda *a, **k: stepped.append(1))
    lock = cfg.run_dir / "checkpoint" / LOCK_FILE
    lock.parent.mkdir(parents=True)
    with FileLock(lock), pytest.raises(RuntimeError, match="another process is training in .*wsc_lora_s0"):
        finetune(cfg)
    assert not stepped and not (cfg.run_dir / "results.json").exists()
