"""Real data (issue 9, item 7): evaluation without a train split, truncation counted, MultiRC's official metrics."""

import json
import shutil
from collections import Counter

import pytest
from conftest import FIXTURES, SUPER_GLUE, tiny_tokenizer

from cola_opt.llm.cli import main
from cola_opt.llm.scoring import Truncation, encode_examples, truncation_warning
from cola_opt.llm.tasks import Example, get_task, sample_splits
from cola_opt.llm.tasks.metrics import multirc_metrics

MULTIRC = SUPER_GLUE / "MultiRC"
needs_multirc = pytest.mark.skipif(not (MULTIRC / "val.jsonl").is_file(), reason=f"{MULTIRC} is not present")


@pytest.fixture()
def boolq_val_only(tmp_path):
    """BoolQ as a folder that holds only val.jsonl and an unlabelled test.jsonl (no train split)."""
    folder = tmp_path / "data" / "BoolQ"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / "super_glue" / "BoolQ" / "val.jsonl", folder / "val.jsonl")
    rows = [json.loads(line) for line in (folder / "val.jsonl").read_text().splitlines()]
    (folder / "test.jsonl").write_text("".join(json.dumps({"question": r["question"], "passage": r["passage"],
                                                           "idx": r["idx"]}) + "\n" for r in rows))
    return tmp_path / "data"


def test_zero_shot_evaluates_a_folder_without_a_train_split(boolq_val_only, tiny_model_dir, tmp_path, capsys):
    code = main(["finetune", "--model", str(tiny_model_dir), "--task", "boolq", "--data-dir", str(boolq_val_only),
                 "--method", "zero-shot", "--autocast", "none", "--progress", "false", "--output-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    r = json.loads((tmp_path / "out" / "boolq_zero-shot_s0" / "results.json").read_text())
    assert r["counts"] == {"train": 0, "dev": 0, "test": 5}  # the whole validation split (5 records)
    assert sorted(r["test"]["idx"]) == [0, 1, 2, 3, 4] and len(r["test"]["predictions"]) == 5
    assert r["capped"] == {"dev": {"asked": 500, "drawn": 0, "reason": r["capped"]["dev"]["reason"]}}
    assert [line for line in err.splitlines() if line.startswith("cola-opt: warning:")] == [
        f"cola-opt: warning: n_dev=500 asked, 0 drawn: {r['capped']['dev']['reason']}"]


def test_training_without_a_train_split_names_the_file_and_the_way_out(boolq_val_only):
    with pytest.raises(FileNotFoundError, match=r"BoolQ/train.jsonl is missing.*--method zero-shot evaluates"):
        sample_splits(get_task("boolq"), seed=0, n_train=4, n_dev=0, n_test=5, data_dir=boolq_val_only)
    s = sample_splits(get_task("boolq"), seed=0, n_train=4, n_dev=0, n_test=5, data_dir=boolq_val_only,
                      need_train=False)
    assert s.counts == {"train": 0, "dev": 0, "test": 5} and s.capped == {}  # nothing asked of dev


def test_truncation_counts_every_cut_prompt_and_lost_token():
    tok = tiny_tokenizer()
    examples = [Example("Question: In the passage above? " * k + "Answer:", (" No", " Yes"), 0) for k in (1, 3, 8)]
    lengths = [len(tok(e.prompt)["input_ids"]) for e in examples]
    cand = max(len(tok(e.prompt + c)["input_ids"]) - n for e, n in zip(examples, lengths) for c in e.candidates)
    limit = lengths[1] + cand  # the second fits exactly, the third does not
    counted = Truncation(limit)
    items = encode_examples(tok, examples, limit, counted)
    assert [len(i.prompt_ids) for i in items] == [lengths[0], lengths[1], limit - cand]
    assert counted == Truncation(limit, n=3, cut=1, tokens_lost=lengths[2] - (limit - cand),
                                 longest=lengths[2] + cand)
    line = truncation_warning({"train": counted, "test": Truncation(limit, n=2)})
    assert line == (f"max_length={limit} cut the start of 1 of 3 train prompts ({counted.tokens_lost} tokens lost); "
                    f"the longest prompt with its answer is {counted.longest} tokens: pass --max-length "
                    f"{counted.longest} to keep every prompt whole")
    assert truncation_warning({"train": Truncation(limit, n=3)}) is None


@needs_multirc
def test_multirc_test_split_is_drawn_by_whole_question():
    answers = Counter()
    for line in (MULTIRC / "val.jsonl").read_text().splitlines():
        for q in json.loads(line)["passage"]["questions"]:
            answers[q["idx"]] = len(q["answers"])
    task = get_task("multirc")
    a = sample_splits(task, seed=3, n_train=4, n_dev=0, n_test=100, data_dir=SUPER_GLUE)
    b = sample_splits(task, seed=3, n_train=4, n_dev=0, n_test=100, data_dir=SUPER_GLUE)
    c = sample_splits(task, seed=4, n_train=4, n_dev=0, n_test=100, data_dir=SUPER_GLUE)
    drawn = Counter(e.idx["question"] for e in a.test)
    assert all(n == answers[q] for q, n in drawn.items())  # every question drawn has all its answer options
    assert 100 - max(answers.values()) < len(a.test) <= 100 and len(drawn) >= 10
    assert [e.idx for e in a.test] == [e.idx for e in b.test] and a.test != c.test


def test_multirc_f1a_and_exact_match_by_hand():
    def ex(q, label):
        return Example("p", (" No", " Yes"), label, {"paragraph": 0, "question": q, "answer": 0})

    examples = [ex(0, 1), ex(0, 0), ex(0, 1), ex(1, 1), ex(1, 0), ex(2, 0)]
    predictions = [1, 0, 1, 0, 1, 0]  # question 0 right, question 1 wrong twice, question 2 right
    # options predicted correct: 0, 2, 4 (tp 2, fp 1); labelled correct: 0, 2, 3 (fn 1): P = R = 2/3
    assert multirc_metrics(examples, predictions) == {"f1a": pytest.approx(2 / 3), "exact_match": pytest.approx(2 / 3),
                                                      "questions": 3}
    assert multirc_metrics(examples[5:], [0])["f1a"] == 0.0  # nothing correct, nothing predicted: F1a 0
    with pytest.raises(ValueError, match="6 examples but 5 predictions"):
        multirc_metrics(examples, predictions[:5])


@needs_multirc
def test_multirc_results_carry_the_record_idx_and_the_official_metrics(tiny_model_dir, tmp_path, capsys):
    code = main(["finetune", "--model", str(tiny_model_dir), "--task", "multirc", "--data-dir", str(SUPER_GLUE),
                 "--method", "zero-shot", "--n-train", "4", "--n-dev", "0", "--n-test", "30", "--autocast", "none",
                 "--progress", "false", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    r = json.loads((tmp_path / "multirc_zero-shot_s0" / "results.json").read_text())
    splits = sample_splits(get_task("multirc"), seed=0, n_train=4, n_dev=0, n_test=30, data_dir=SUPER_GLUE)
    test = r["test"]
    assert test["idx"] == [e.idx for e in splits.test]
    expected = multirc_metrics(splits.test, test["predictions"])
    assert (test["f1a"], test["exact_match"], test["questions"]) == (expected["f1a"], expected["exact_match"],
                                                                    expected["questions"])
    assert f"F1a {test['f1a'] * 100:.2f}%, EM {test['exact_match'] * 100:.2f}%" in out
    assert r["truncation"]["test"]["cut"] == test["n"]  # the tiny tokenizer's MultiRC prompts all pass 256 tokens


def test_the_record_idx_leaves_the_data_fingerprint_as_it_was(super_glue_dir):
    s = sample_splits(get_task("wsc"), seed=0, n_train=16, n_dev=4, n_test=1000, data_dir=super_glue_dir)
    assert s.test[0].idx is not None
    assert s.fingerprint() == "ce2a1792fc150962"  # recorded before Example had its idx
