"""Perplexity protocol and the lm-eval bridge (local PIQA / MMLU / WikiText tasks) on a tiny Llama."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from oats.data.paths import DataNotAvailableError
from oats.data.text import wikitext2_test_text
from oats.eval.lm_eval_bridge import SUITES, expand_tasks, run_lm_eval
from oats.eval.perplexity import perplexity
from oats.eval.tasks.local import MMLU10_SUBJECTS, load_mmlu_local, load_piqa_local, load_wikitext_local, mmlu_subjects

pytest.importorskip("lm_eval")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    """The real SmolLM2 tokenizer."""
    return smollm2[1]


@pytest.fixture(scope="module")
def tiny(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512, use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


class UniformLM(nn.Module):
    """Predicts every token with probability 1 / vocab: perplexity must be exactly vocab."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab)


# --------------------------------------------------------------------------- perplexity
def test_perplexity_matches_manual(tiny, tokenizer, data_root):
    record = perplexity(tiny, tokenizer, seqlen=32, max_windows=3, data_root=data_root, progress=False)
    text, origin = wikitext2_test_text("local", data_root)
    ids = tokenizer(text, return_tensors="pt").input_ids[0][: 3 * 32].view(3, 32)
    with torch.no_grad():
        logits = tiny(ids).logits
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert record["value"] == pytest.approx(math.exp(manual.item()), rel=1e-5)
    assert record["task"] == "wikitext2" and record["metric"] == "token_perplexity"
    assert record["n"] == 3 and record["n_tokens"] == 3 * 31 and record["seqlen"] == 32
    assert record["source"] == origin and record["n_windows_total"] > 1000
    batched = perplexity(tiny, tokenizer, seqlen=32, max_windows=3, data_root=data_root, batch_size=2, progress=False)
    assert batched["value"] == pytest.approx(record["value"], rel=1e-6)


def test_perplexity_of_uniform_model_is_vocab(tokenizer, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("Some text to score. " * 200)
    vocab = len(tokenizer)
    record = perplexity(UniformLM(vocab), tokenizer, source=str(path), seqlen=50, progress=False)
    assert record["value"] == pytest.approx(vocab, rel=1e-5)  # float32 log-softmax
    assert record["task"] == "text" and record["source"] == f"local:{path}"


def test_perplexity_with_replaced_linear(tiny, tokenizer, data_root):
    """A model whose linears were swapped for custom modules is evaluated as given."""

    class Doubled(nn.Module):
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.inner(x)

    base = perplexity(tiny, tokenizer, seqlen=32, max_windows=2, data_root=data_root, progress=False)["value"]
    mlp = tiny.model.layers[0].mlp
    original = mlp.down_proj
    mlp.down_proj = Doubled(original)
    try:
        changed = perplexity(tiny, tokenizer, seqlen=32, max_windows=2, data_root=data_root, progress=False)["value"]
    finally:
        mlp.down_proj = original
    assert changed != pytest.approx(base)


def test_perplexity_bad_source(tiny, tokenizer):
    with pytest.raises(ValueError, match="wikitext2-local"):
        perplexity(tiny, tokenizer, source="ptb")


# --------------------------------------------------------------------------- local task data
def test_local_task_data(data_root):
    piqa = load_piqa_local(data_root)["validation"]
    assert len(piqa) == 1838 and set(piqa[0]) == {"goal", "sol1", "sol2", "label"}
    subjects = mmlu_subjects(data_root)
    assert len(subjects) == 57 and set(MMLU10_SUBJECTS) <= set(subjects)
    algebra = load_mmlu_local("abstract_algebra", data_root)
    assert len(algebra["dev"]) == 5 and len(algebra["test"]) == 95  # 100 questions, 5 held out as dev
    total = sum(len(load_mmlu_local(s, data_root)["test"]) + 5 for s in subjects)
    assert total == 14042  # the two stray header rows are gone
    pages = load_wikitext_local(data_root)["test"]
    assert len(pages) == 62 and pages[0]["page"].startswith(" = Robert Boulter = \n")


# --------------------------------------------------------------------------- lm-eval bridge
def test_run_lm_eval_local_tasks(tiny, tokenizer, data_root):
    records = run_lm_eval(
        tiny, tokenizer, ["piqa_local", "mmlu_local_abstract_algebra", "wikitext_local"], limit=2, data_root=data_root
    )
    by_task = {r["task"]: r for r in records}
    piqa = by_task["piqa_local"]
    assert piqa["metric"] == "acc_norm" and set(piqa["metrics"]) >= {"acc", "acc_norm"} and piqa["n"] == 2
    assert 0.0 <= piqa["value"] <= 1.0 and piqa["num_fewshot"] == 0
    assert piqa["source"].startswith("local:") and "piqa/valid.jsonl" in piqa["source"]
    mmlu = by_task["mmlu_local_abstract_algebra"]
    assert mmlu["metric"] == "acc" and mmlu["num_fewshot"] == 5 and mmlu["n"] == 2
    wiki = by_task["wikitext_local"]
    assert wiki["metric"] == "word_perplexity" and wiki["value"] > 1.0 and wiki["stderr"] is None
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"  # conftest's value restored


def test_mmlu10_local_suite_is_weighted(tiny, tokenizer, data_root):
    records = run_lm_eval(tiny, tokenizer, ["mmlu10_local"], limit=1, num_fewshot=0, data_root=data_root)
    assert [r["task"] for r in records] == [*(f"mmlu_local_{s}" for s in MMLU10_SUBJECTS), "mmlu10_local"]
    members, suite = records[:-1], records[-1]
    assert all(r["num_fewshot"] == 0 and r["n"] == 1 for r in members)
    assert suite["n"] == 10 and suite["value"] == pytest.approx(sum(r["value"] for r in members) / 10)
    assert "weighted by question count" in suite["protocol"]


def test_suites_expand():
    assert [t for t, _, _ in expand_tasks(["zeroshot"])] == list(SUITES["zeroshot"].tasks)
    assert expand_tasks(["mmlu10"])[0] == ("mmlu_abstract_algebra", "mmlu10", 5)
    assert expand_tasks(["piqa_local"]) == [("piqa_local", None, None)]


def test_unknown_local_task(tiny, tokenizer, data_root):
    with pytest.raises(ValueError, match=r"unknown evaluation task 'mmlu_local_astrology'.*mmlu10_local"):
        run_lm_eval(tiny, tokenizer, ["mmlu_local_astrology"], data_root=data_root)


def test_hub_names_offline(tiny, tokenizer, data_root):
    """Unknown names list what exists; hub tasks offline point at the local ones (builds lm-eval's index)."""
    with pytest.raises(ValueError, match=r"unknown evaluation task 'piqa_locl'.*piqa_local"):
        run_lm_eval(tiny, tokenizer, ["piqa_locl"], data_root=data_root)
    with pytest.raises(DataNotAvailableError, match="zeroshot_local"):
        run_lm_eval(tiny, tokenizer, ["zeroshot"], data_root=data_root)


def test_perplexity_with_bos_on_every_window(tiny, tokenizer, data_root):
    """Gemma-style evaluation: each window is BOS + seqlen - 1 text tokens, and the record says so."""
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, ids):
            seen.append(ids.clone())
            return self.inner(ids)

    plain = perplexity(tiny, tokenizer, seqlen=32, max_windows=3, data_root=data_root, progress=False)
    record = perplexity(Spy(tiny), tokenizer, seqlen=32, max_windows=3, data_root=data_root, progress=False,
                        bos_per_window=True)
    windows = torch.cat(seen)
    assert windows.shape == (3, 32) and (windows[:, 0] == tokenizer.bos_token_id).all()
    text_ids = tokenizer(wikitext2_test_text("auto", data_root)[0], add_special_tokens=False,
                         return_tensors="pt").input_ids[0]
    assert torch.equal(windows[:, 1:].reshape(-1), text_ids[: 3 * 31])
    assert record["bos"] == "every window" and plain["bos"].startswith("as the tokenizer")
    assert record["n_tokens"] == 3 * 31 and record["value"] != plain["value"]


def test_blockwise_perplexity_equals_the_whole_model(tiny, tokenizer, data_root):
    """Block by block (one block on the device at a time) gives the whole-model number, bit for bit."""
    # the same batch shapes on both paths (2 then 1 windows), so the same kernels run
    whole = perplexity(tiny, tokenizer, seqlen=32, max_windows=3, data_root=data_root, progress=False,
                       batch_size=2)
    blocks = perplexity(tiny, tokenizer, seqlen=32, max_windows=3, data_root=data_root, progress=False,
                        blockwise=True, batch_size=2)
    assert blocks["blockwise"] and not whole["blockwise"]
    assert blocks["value"] == whole["value"] and blocks["n_tokens"] == whole["n_tokens"]


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma3"])
def test_blockwise_window_nll_per_architecture(arch):
    from oats.eval.blockwise import blockwise_window_nll
    from oats.eval.perplexity import window_nll
    from tiny_models import TINY, calib_ids

    model = TINY[arch]()
    windows = calib_ids(3, 32, seed=4)
    whole = torch.cat([window_nll(model, windows[i:i + 1]) for i in range(3)])
    assert torch.equal(blockwise_window_nll(model, windows), whole)
    # the model is left where it was and in one piece
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert torch.equal(torch.cat([window_nll(model, windows[i:i + 1]) for i in range(3)]), whole)
