"""Shared fixtures: a tiny random Llama with a tiny BPE tokenizer, saved as a local model directory."""

from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUPER_GLUE = SHARED_DATA / "super_glue"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch):
    """Tests do not depend on the shell: COLA_DATA_DIR is unset (a test that wants it sets it)."""
    monkeypatch.delenv("COLA_DATA_DIR", raising=False)


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in memory on a few sentences (vocab 400)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [
        "The trophy does not fit into the suitcase because it is too big.",
        "Question: In the passage above, does the pronoun refer to the noun? Answer: Yes No",
        "Does this mean that the hypothesis is true? Yes or No? Answer: No Yes",
        "Mark told Pete many lies about himself, which Pete included in his book.",
    ] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(vocab_size=400):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0)
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="module")
def deterministic():
    """Deterministic CPU settings for bit-for-bit comparisons (resume tests): one thread, deterministic algorithms."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A local model directory (tiny random Llama + BPE tokenizer) that ``load_model`` reads."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = tiny_tokenizer()
    tiny_llama(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture()
def super_glue_dir():
    if not (SUPER_GLUE / "WSC").is_dir():
        pytest.skip(f"{SUPER_GLUE} is not present")
    return SUPER_GLUE


FIXTURES = Path(__file__).resolve().parent / "fixtures"
GLUE = SHARED_DATA / "glue"


@pytest.fixture()
def fixtures_dir():
    """Small hand-written BoolQ and MultiRC files in the SuperGLUE release format."""
    return FIXTURES / "super_glue"


@pytest.fixture()
def glue_dir():
    if not (GLUE / "SST-2").is_dir():
        pytest.skip(f"{GLUE} is not present")
    return GLUE


@pytest.fixture()
def shared_data_dir(super_glue_dir, glue_dir):
    """``../shared/data``: holds both ``super_glue/`` and ``glue/``."""
    return SHARED_DATA
