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


# ------------------------------------------------------------------ the five other tasks
def _examples(task_name, split, root):
    task = get_task(task_name)
    return [task.example(r) for r in read_split(task, split, root)]


def test_cb_three_classes(super_glue_dir):
    train, val = _examples("cb", "train", super_glue_dir), _examples("cb", "val", super_glue_dir)
    assert (len(train), len(val)) == (250, 56)
    assert all(e.candidates == (" Yes", " No", " Maybe") for e in train)
    # entailment / contradiction / neutral, counted independently from the raw labels
    assert [sum(e.label == k for e in train) for k in range(3)] == [115, 119, 16]
    assert [sum(e.label == k for e in val) for k in range(3)] == [23, 28, 5]
    assert train[0].prompt == ('It was a complex language. Not written down but handed down. One might say it was '
                               'peeled down.\nQuestion: Does this mean that "the language was peeled down" is true? '
                               'Yes, No, or Maybe?\nAnswer:')
    assert get_task("cb").max_dev == 100


def test_wic_word_and_spans(super_glue_dir):
    task = get_task("WiC")
    train = read_split(task, "train", super_glue_dir)
    assert (len(train), len(read_split(task, "val", super_glue_dir))) == (5428, 638)
    ex = task.example(train[0])
    assert ex.candidates == (" No", " Yes") and ex.label == 0
    assert ex.prompt == ('Sentence 1: Do you want to come over to my place later?\nSentence 2: A political system '
                         'with no place for the less prominent groups.\nQuestion: Does the word "place" have the same '
                         'meaning in both sentences ("place" in sentence 1, "place" in sentence 2)? Yes or No?\nAnswer:')
    inflected = next(r for r in train if r["word"] == "laugh" and "laughed" in r["sentence1"])
    assert '("laughed" in sentence 1' in task.example(inflected).prompt  # the span, not the lemma
    assert sum(task.example(r).label for r in train) == 2714
    with pytest.raises(ValueError, match=r"span1 \[5, 99\) is not inside sentence1"):
        task.example({**train[0], "start1": 5, "end1": 99})


def test_sst2_glue_tsv(glue_dir):
    task = get_task("SST-2")
    assert task.benchmark == "glue" and resolve_data_dir(task) == glue_dir
    train, dev = read_split(task, "train", glue_dir), read_split(task, "val", glue_dir)
    assert (len(train), len(dev)) == (67349, 872)  # "val" is GLUE's dev.tsv
    assert sum(r["label"] for r in train) == 37569 and sum(r["label"] for r in dev) == 444
    ex = task.example(dev[0])
    assert ex.candidates == (" terrible", " great") and ex.label == 1
    assert ex.prompt == ("it 's a charming and often affecting journey .\nQuestion: Was that review terrible or "
                         "great?\nAnswer: It was")


def test_sst2_bad_tsv_is_named(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match=r"train.tsv: header \['text', 'label'\]"):
        read_split(get_task("sst2"), "train", tmp_path)
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfine\t2\n")
    with pytest.raises(ValueError, match="line 2: expected"):
        read_split(get_task("sst2"), "train", tmp_path)


def test_boolq_fixture(fixtures_dir):
    task = get_task("boolq")
    train, val = read_split(task, "train", fixtures_dir), read_split(task, "val", fixtures_dir)
    assert (len(train), len(val)) == (12, 5)
    labels = [task.example(r).label for r in train]
    assert labels == [int(r["label"]) for r in train] and sum(labels) == 6
    ex = task.example(train[0])
    assert ex.candidates == (" No", " Yes") and ex.label == 0
    assert ex.prompt == ("The Severn is the longest river in Great Britain, at about 354 km; the Thames, at about "
                         "346 km, is the second longest.\nQuestion: is the river thames longer than the river "
                         "severn?\nAnswer:")
    with pytest.raises(ValueError, match="BoolQ label 'yes' is not a boolean"):
        task.example({**train[0], "label": "yes"})


def test_majority_class_on_test_and_dev(fixtures_dir):
    splits = sample_splits(get_task("boolq"), seed=1, n_train=5, n_dev=4, n_test=5, data_dir=fixtures_dir)
    train = [e.label for e in splits.train]
    top = 1 if sum(train) > len(train) / 2 else 0  # 5 training labels: no tie
    assert splits.majority_accuracy() == sum(e.label == top for e in splits.test) / 5
    assert splits.majority_accuracy("dev") == sum(e.label == top for e in splits.dev) / 4
    with pytest.raises(ValueError, match="split 'train' must be 'test' or 'dev'"):
        splits.majority_accuracy("train")
    no_dev = sample_splits(get_task("boolq"), seed=1, n_train=5, n_dev=0, n_test=5, data_dir=fixtures_dir)
    assert no_dev.majority_accuracy("dev") is None


def test_multirc_fixture_is_one_example_per_answer(fixtures_dir):
    task = get_task("multirc")
    train, val = read_split(task, "train", fixtures_dir), read_split(task, "val", fixtures_dir)
    assert (len(train), len(val)) == (13, 5)  # answer options: 3+2+4+2+2 and 3+2
    assert [r["idx"] for r in val[:3]] == [{"paragraph": 0, "question": 0, "answer": a} for a in range(3)]
    assert [task.example(r).label for r in val] == [1, 0, 0, 1, 0]
    ex = task.example(val[0])
    assert ex.candidates == (" No", " Yes")
    assert ex.prompt == ("Leo baked bread every Sunday. One Sunday he ran out of flour and made pancakes instead.\n"
                         "Question: What did Leo make when he had no flour?\n"
                         'Is "Pancakes" a correct answer to that question? Yes or No?\nAnswer:')
    s = sample_splits(task, seed=0, n_train=8, n_dev=3, n_test=1000, data_dir=fixtures_dir)
    assert s.counts == {"train": 8, "dev": 3, "test": 5}


def test_parent_folder_serves_both_benchmarks(shared_data_dir):
    assert resolve_data_dir(get_task("sst2"), shared_data_dir) == shared_data_dir / "glue"
    assert resolve_data_dir(get_task("cb"), shared_data_dir) == shared_data_dir / "super_glue"
    with pytest.raises(FileNotFoundError, match=r"no BoolQ/ folder \(nor super_glue/BoolQ/\)"):
        resolve_data_dir(get_task("boolq"), shared_data_dir)


def test_every_candidate_is_one_smollm2_token_in_context(tmp_path):
    """The single-token fast path needs each label word to be one token after the prompt."""
    from cola_opt.llm.models import cache_dir

    path = cache_dir() / "models" / "smollm2-135m"
    if not (path / "tokenizer.json").is_file():
        pytest.skip("SmolLM2-135M is not converted in the cache")
    from transformers import AutoTokenizer

    from cola_opt.llm.scoring import encode_examples
    from cola_opt.llm.tasks import TASKS, Example

    tok = AutoTokenizer.from_pretrained(path)
    for name, task in TASKS.items():
        enc = encode_examples(tok, [Example("Question: x?\nAnswer:", task.candidates, 0)], 64)[0]
        assert all(len(c) == 1 for c in enc.candidate_ids), name
