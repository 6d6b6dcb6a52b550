"""Task loaders, templates and MeZO-protocol sampling on the real SuperGLUE files."""

import json

import pytest

from cola_opt.llm.tasks import get_task, read_split, resolve_data_dir, sample_splits


def test_wsc_counts_template_and_labels(super_glue_dir):
    task = get_task("WSC")
    train = read_split(task, "train", super_glue_dir)
    val = read_split(task, "val", super_glue_dir)
    assert (len(train), len(val)) == (554, 104)
    ex = task.example(train[0])
    assert ex.prompt.startswith("Mark told Pete many lies")
    assert 'pronoun "He" refer to "Mark"' in ex.prompt and ex.prompt.endswith("Answer:")
    assert ex.candidates == (" No", " Yes") and ex.label == 0
    assert sum(task.example(r).label for r in train) == sum(bool(r["label"]) for r in train)


def test_rte_counts_and_labels(super_glue_dir):
    task = get_task("rte")
    train = read_split(task, "train", super_glue_dir)
    assert len(train) == 2490
    labels = [task.example(r).label for r in train]
    assert set(labels) == {0, 1}
    assert labels.count(0) == sum(r["label"] == "entailment" for r in train)
    assert task.candidates == (" Yes", " No")


def test_mezo_sampling_is_per_seed_and_dev_is_the_tail(super_glue_dir):
    task = get_task("rte")
    a = sample_splits(task, seed=1, n_train=100, n_dev=20, n_test=50, data_dir=super_glue_dir)
    b = sample_splits(task, seed=1, n_train=100, n_dev=20, n_test=50, data_dir=super_glue_dir)
    c = sample_splits(task, seed=2, n_train=100, n_dev=20, n_test=50, data_dir=super_glue_dir)
    assert a.counts == {"train": 100, "dev": 20, "test": 50}
    assert a.train == b.train and a.dev == b.dev and a.test == b.test
    assert a.train != c.train
    prompts = {e.prompt for e in a.train}
    assert not prompts & {e.prompt for e in a.dev}
    # the dev set is the last n_dev of one draw of n_train + n_dev
    big = sample_splits(task, seed=1, n_train=100, n_dev=0, n_test=50, data_dir=super_glue_dir)
    assert big.counts["dev"] == 0


def test_small_train_split_caps_n_train_and_small_val_is_used_whole(super_glue_dir):
    s = sample_splits(get_task("wsc"), seed=0, n_train=1000, n_dev=100, n_test=1000, data_dir=super_glue_dir)
    assert s.counts == {"train": 454, "dev": 100, "test": 104}


def test_unknown_task_lists_known_ones():
    with pytest.raises(ValueError, match="unknown task 'nope'.*rte.*wsc"):
        get_task("nope")


def test_missing_data_dir_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist.*does not exist"):
        resolve_data_dir(get_task("wsc"), tmp_path / "does-not-exist")
    with pytest.raises(FileNotFoundError, match="has no WSC/ folder"):
        resolve_data_dir(get_task("wsc"), tmp_path)


def test_env_variable_is_used(tmp_path, monkeypatch):
    (tmp_path / "WSC").mkdir()
    rec = {"text": "A b.", "target": {"span1_text": "A", "span2_text": "b", "span1_index": 0, "span2_index": 1},
           "idx": 0, "label": True}
    for split in ("train", "val"):
        (tmp_path / "WSC" / f"{split}.jsonl").write_text("\n".join(json.dumps({**rec, "idx": i}) for i in range(5)))
    monkeypatch.setenv("COLA_DATA_DIR", str(tmp_path))
    s = sample_splits(get_task("wsc"), seed=0, n_train=3, n_dev=1, n_test=5)
    assert s.source == str(tmp_path) and s.counts == {"train": 3, "dev": 1, "test": 5}
    assert s.train[0].label == 1
