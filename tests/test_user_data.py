"""Users' own data: the readers (JSONL, JSON, CSV, parquet, text folders), records to examples, splits, bad input."""

import json

import pytest

from cola_opt.llm.config import FinetuneConfig
from cola_opt.llm.tasks import Completion, Document, Example, UserData
from cola_opt.llm.tasks.files import read_records


def _jsonl(path, rows, blank_after=None):
    lines = [json.dumps(r) for r in rows]
    if blank_after is not None:
        lines.insert(blank_after, "")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _pairs(n):
    return [{"prompt": f"Question {i}:", "completion": f" answer {i}"} for i in range(n)]


# ------------------------------------------------------------------ readers
def test_jsonl_records_know_their_lines(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", _pairs(3), blank_after=1)
    recs = read_records(path)
    assert [r.where for r in recs] == [f"{path}:1", f"{path}:3", f"{path}:4"]
    assert recs[1].fields == {"prompt": "Question 1:", "completion": " answer 1"}
    (tmp_path / "b.json").write_text(json.dumps(_pairs(2)))
    assert [r.where for r in read_records(str(tmp_path / "b.json"))] == [f"{tmp_path / 'b.json'} record {i}"
                                                                         for i in (1, 2)]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_records(str(tmp_path / "bad.jsonl"))


def test_csv_values_stay_the_strings_written_and_lines_are_exact(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('prompt,completion,label\nIs it?,NA,None\n"two\nlines", 007,1\nlast,null,0\n')
    recs = read_records(str(path))
    assert [r.fields["completion"] for r in recs] == ["NA", " 007", "null"]  # datasets' CSV reader makes these NaN/7.0
    assert recs[0].fields["label"] == "None" and recs[1].fields["prompt"] == "two\nlines"
    assert [r.where for r in recs] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    (tmp_path / "short.csv").write_text("prompt,completion\na,b\nc\n")
    with pytest.raises(ValueError, match=r"short.csv:3: 1 values for the 2 columns"):
        read_records(str(tmp_path / "short.csv"))
    (tmp_path / "long.tsv").write_text("prompt\tcompletion\na\tb\tc\n")
    with pytest.raises(ValueError, match=r"long.tsv:2: 3 values for the 2 columns"):
        read_records(str(tmp_path / "long.tsv"))


def test_parquet_through_datasets_names_rows_and_leaves_no_cache(tmp_path, monkeypatch):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home" / "hf"))
    path = tmp_path / "a.parquet"
    pd.DataFrame({"prompt": ["a", "b"], "completion": [" x", None], "n": [1, 2]}).to_parquet(path)
    recs = read_records(str(path))
    assert [r.fields for r in recs] == [{"prompt": "a", "completion": " x", "n": 1},
                                        {"prompt": "b", "completion": None, "n": 2}]
    assert recs[1].where == f"{path} row 2"
    assert not (tmp_path / "home").exists()  # read into a temporary cache that is gone
    data = UserData("completion", str(path))
    with pytest.raises(ValueError, match=r"a.parquet row 2: field 'completion' \(--completion-field\) is empty"):
        data.examples("train_file")


def test_a_folder_is_one_document_per_matching_file_in_path_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("second")
    (root / "a.txt").write_text("first")
    (root / "sub" / "c.txt").write_text("third")
    (root / "x.py").write_text("print('code')")
    (root / "empty.txt").write_text("  \n")
    docs, where = UserData("text", str(root)).examples("train_file")
    assert docs == [Document("first"), Document("second"), Document("third")]  # the empty one skipped
    assert where == [str(root / "a.txt"), str(root / "b.txt"), str(root / "sub" / "c.txt")]
    code, _ = UserData("text", str(root), text_glob="*.py").examples("train_file")
    assert code == [Document("print('code')")]
    with pytest.raises(ValueError, match=r"no file matching '\*\.md'"):
        UserData("text", str(root), text_glob="*.md").examples("train_file")
    (root / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"bin.txt: not UTF-8 text"):
        UserData("text", str(root)).examples("train_file")


# ------------------------------------------------------------------ records -> examples
def test_completion_and_classification_examples(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"q": "Is it big?", "a": " Yes", "premise": "It is big.", "label": "Yes"},
                                         {"q": "Small?", "a": " No", "premise": "It is big.", "label": 0}])
    pairs, _ = UserData("completion", path, prompt_field="q", completion_field="a").examples("train_file")
    assert pairs == [Completion("Is it big?", " Yes"), Completion("Small?", " No")]
    cls = UserData("classification", path, template="{premise}\\nQuestion: {q}\\nAnswer:", candidates=("No", "Yes"))
    examples, _ = cls.examples("train_file")
    assert examples[0] == Example("It is big.\nQuestion: Is it big?\nAnswer:", (" No", " Yes"), 1)
    assert examples[1].label == 0  # an index
    assert UserData("classification", path, template="{q}", candidates=(" No", " Yes"), label_prefix="").examples(
        "train_file")[0][0].label == 1  # matched after stripping


@pytest.mark.parametrize("rows,data,message", [
    ([{"prompt": "a"}], {}, r":1: no field 'completion' \(--completion-field\); the record's fields: prompt"),
    ([{"prompt": "a", "completion": "  "}], {}, r":1: empty completion"),
    ([{"prompt": "", "completion": "b"}], {}, r":1: empty prompt"),
    ([{"prompt": "a", "completion": ["b"]}], {}, r":1: field 'completion' \(--completion-field\) is a list, not text"),
    ([{"prompt": "a", "completion": None}], {}, r"is empty \(null\)"),
    ([{"x": "a", "label": "Maybe"}], {"task": "classification", "template": "{x}", "candidates": ("No", "Yes")},
     r":1: label 'Maybe' \(field 'label'\) is not one of the candidates \['No', 'Yes'\] nor an index 0..1"),
    ([{"x": "a", "label": 2}], {"task": "classification", "template": "{x}", "candidates": ("No", "Yes")},
     r"label 2 .* nor an index 0..1"),
    ([{"x": "a", "label": True}], {"task": "classification", "template": "{x}", "candidates": ("No", "Yes")},
     r"label True"),
    ([{"x": "a", "label": "Yes"}], {"task": "classification", "template": "{x} {hypothesis}", "candidates": ("No", "Yes")},
     r":1: no field 'hypothesis' \(--template\)"),
])
def test_a_bad_record_names_its_line_and_field(rows, data, message, tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        UserData(**{"task": "completion", "train_file": path, **data}).examples("train_file")


def test_a_source_without_usable_records(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"train_file '.*empty.jsonl' holds no usable record$"):
        UserData("completion", str(tmp_path / "empty.jsonl")).examples("train_file")
    (tmp_path / "blank.txt").write_text(" ")
    with pytest.raises(ValueError, match=r"holds no usable record \(1 empty documents\)"):
        UserData("text", str(tmp_path / "blank.txt")).examples("train_file")
    with pytest.raises(FileNotFoundError, match="test_file 'nowhere.jsonl' does not exist"):
        UserData("completion", "x", test_file="nowhere.jsonl").examples("test_file")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unknown format '.xlsx'; use a .jsonl"):
        read_records(str(tmp_path / "a.xlsx"))


@pytest.mark.parametrize("options,message", [
    ({"train_file": None}, "pass --train-file"),
    ({"template": "{}"}, r"has the field \{\}"),
    ({"template": "{0}"}, r"has the field \{0\}"),
    ({"template": "{a.b}"}, r"has the field \{a.b\}"),
    ({"template": "no fields"}, "names no field"),
    ({"template": "{a"}, "is not a valid format string"),
    ({"candidates": ("Yes",)}, "need --task classification"),
    ({"task": "classification"}, "must be two or more distinct"),
    ({"task": "classification", "candidates": ("Yes", "Yes")}, "must be two or more distinct"),
    ({"task": "text", "template": "{x}"}, "template needs --task completion or classification"),
    ({"text_field": ""}, "text_field '' must be a field name"),
])
def test_bad_options_are_refused_before_reading(options, message):
    with pytest.raises(ValueError, match=message):
        UserData(**{"task": "completion", "train_file": "never-read.jsonl", **options}).validate()


# ------------------------------------------------------------------ splits
def test_one_file_is_split_by_seed(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", _pairs(50))
    data = UserData("completion", path)
    s0 = data.sample(seed=0, n_train=30, n_dev=5, n_test=10)
    assert s0.counts == {"train": 30, "dev": 5, "test": 10}
    parts = [s0.train, s0.dev, s0.test]
    assert len({e for p in parts for e in p}) == 45  # disjoint
    assert s0.where["test"] == sorted(s0.where["test"], key=lambda w: int(w.rsplit(":", 1)[1]))  # file order
    assert data.sample(seed=0, n_train=30, n_dev=5, n_test=10).fingerprint() == s0.fingerprint()
    s1 = data.sample(seed=1, n_train=30, n_dev=5, n_test=10)
    assert set(s1.test) != set(s0.test) and s1.fingerprint() != s0.fingerprint()
    capped = data.sample(seed=0, n_train=1000, n_dev=5, n_test=10)
    assert capped.counts == {"train": 35, "dev": 5, "test": 10}  # n_train capped, as MeZO caps it
    assert capped.test == s0.test  # the test draw comes first and does not depend on n_train
    with pytest.raises(ValueError, match=r"has 50 usable records: n_test=45 and n_dev=5 leave none to train on"):
        data.sample(seed=0, n_train=10, n_dev=5, n_test=45)


def test_separate_files_and_the_same_file_for_memorisation(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", _pairs(20))
    dev = _jsonl(tmp_path / "dev.jsonl", _pairs(30)[20:])
    test = _jsonl(tmp_path / "test.jsonl", _pairs(40)[30:])
    s = UserData("completion", train, dev_file=dev, test_file=test).sample(seed=3, n_train=20, n_dev=4, n_test=100)
    assert s.counts == {"train": 20, "dev": 4, "test": 10}  # all of the test file (in file order): it holds fewer
    assert s.test == [Completion(f"Question {i}:", f" answer {i}") for i in range(30, 40)]
    assert {e.prompt for e in s.dev} <= {f"Question {i}:" for i in range(20, 30)}
    assert sorted(s.train, key=lambda e: int(e.prompt.split()[1][:-1])) == [Completion(**r) for r in _pairs(20)]
    assert s.where["dev"][0].startswith(dev) and "test: " + test in s.source
    memo = UserData("completion", train, test_file=train).sample(seed=0, n_train=20, n_dev=0, n_test=20)
    assert set(memo.test) == set(memo.train) and memo.counts["test"] == 20


def test_documents_are_split_whole(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i in range(8):
        (root / f"{i}.txt").write_text(f"document {i} " * (i + 1))
    s = UserData("text", str(root)).sample(seed=0, n_train=10, n_dev=1, n_test=2)
    assert s.counts == {"train": 5, "dev": 1, "test": 2} and all(isinstance(d, Document) for d in s.train)
    assert not {d.text for d in s.test} & {d.text for d in s.train + s.dev}
    assert s.majority_accuracy() is None  # no labels, no majority class


# ------------------------------------------------------------------ the config's options
def test_config_routes_user_options(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", _pairs(5))
    cfg = FinetuneConfig(task="completion", train_file=path, output_dir=str(tmp_path / "runs"))
    cfg.validate()
    assert cfg.user_data().train_file == path and cfg.run_dir.name == "completion_cola_s0"
    with pytest.raises(ValueError, match="train_file .* is an option of your own data: .* task 'wsc' is built in"):
        FinetuneConfig(task="wsc", train_file=path).validate()
    with pytest.raises(ValueError, match="candidates .* is an option of your own data"):
        FinetuneConfig(task="rte", candidates=("a", "b")).validate()
    with pytest.raises(ValueError, match="chat_template needs --task completion, not 'classification'"):
        FinetuneConfig(task="classification", train_file=path, candidates=("a", "b"), chat_template=True).validate()
    with pytest.raises(ValueError, match="unknown task 'txt'.*or, for your own data, text, completion, classification"):
        FinetuneConfig(task="txt").validate()


def test_new_fields_keep_old_grid_fingerprints():
    from cola_opt.llm.config import USER_TASK_OPTIONS

    shared = FinetuneConfig().shared_settings()
    assert not set(USER_TASK_OPTIONS) & set(shared)  # at their defaults they are not in a grid's fingerprint
    assert "template" in FinetuneConfig(template="{x}").shared_settings()  # a grid that sets one is another grid
    assert "train_file" not in FinetuneConfig(train_file="x.jsonl").shared_settings()  # the data are fingerprinted


def test_hub_names_go_to_load_dataset(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(path, config, split):
        calls.append((path, config, split))
        return [{"text": "a document"}, {"text": "another"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    recs = read_records("hf:Salesforce/wikitext:wikitext-2-raw-v1@validation")
    assert calls == [("Salesforce/wikitext", "wikitext-2-raw-v1", "validation")]
    assert [r.where for r in recs] == ["hf:Salesforce/wikitext:wikitext-2-raw-v1@validation row 1",
                                       "hf:Salesforce/wikitext:wikitext-2-raw-v1@validation row 2"]
    read_records("hf:stanfordnlp/imdb")
    assert calls[-1] == ("stanfordnlp/imdb", None, "train")

    def offline(*a, **k):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"train_file 'hf:x/y': HF datasets could not load it \(ConnectionError"):
        read_records("hf:x/y")
    with pytest.raises(ValueError, match="names no dataset"):
        read_records("hf:")
