"""Data root / cache configuration, text loading, WikiText-2 rows and calibration sampling."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from oats.data import paths
from oats.data.calibration import DEFAULT_SEEDS, get_calibration, load_calibration_corpus
from oats.data.paths import DataNotAvailableError, cache_dir, data_file, data_root
from oats.data.text import (
    load_local_documents,
    read_text,
    split_documents,
    wikitext2_rows_from_raw,
    wikitext2_test_text,
)


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    """The real SmolLM2 tokenizer."""
    return smollm2[1]


@pytest.fixture
def long_docs(tmp_path) -> Path:
    """A text file of 30 distinct documents of ~150-400 tokens each."""
    rng = random.Random(1)
    words = "alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river stone cloud".split()
    docs = [f"Document {i}. " + " ".join(rng.choice(words) for _ in range(rng.randint(150, 400))) for i in range(30)]
    path = tmp_path / "long.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- paths
def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("OATS_DATA_ROOT", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert data_root() == (tmp_path / "env").resolve()
    monkeypatch.delenv("OATS_DATA_ROOT")
    monkeypatch.setattr(paths, "_DEFAULT_DATA_ROOT", tmp_path)
    assert data_root() == tmp_path.resolve()
    monkeypatch.setattr(paths, "_DEFAULT_DATA_ROOT", tmp_path / "missing")
    with pytest.raises(DataNotAvailableError, match="OATS_DATA_ROOT"):
        data_root()


def test_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OATS_CACHE_DIR", str(tmp_path / "c1"))
    assert cache_dir() == (tmp_path / "c1").resolve() and (tmp_path / "c1").is_dir()
    assert cache_dir(tmp_path / "c2") == (tmp_path / "c2").resolve()


def test_data_file_missing(tmp_path):
    with pytest.raises(DataNotAvailableError, match=r"piqa/valid.jsonl.*OATS_DATA_ROOT"):
        data_file("piqa/valid.jsonl", tmp_path)


# --------------------------------------------------------------------------- text
def test_read_text_and_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"one\r\nline two\r\n\r\n  \r\nsecond doc\rend\n\n\n")
    assert read_text(path) == "one\nline two\n\n  \nsecond doc\nend\n\n\n"
    assert split_documents(read_text(path)) == ["one\nline two", "second doc\nend"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("third\n\nfourth")
    assert load_local_documents(tmp_path) == ["one\nline two", "second doc\nend", "third", "fourth"]
    with pytest.raises(DataNotAvailableError):
        load_local_documents(tmp_path / "nope")


def test_wikitext_rows_rebuild_blank_lines():
    raw = " = A = \n Para one . \n Para two . \n = = B = = \n = = = C = = = \n Para three . \n"
    assert wikitext2_rows_from_raw(raw) == [
        "", " = A = \n", "", " Para one . \n", " Para two . \n",
        "", " = = B = = \n", "", "", " = = = C = = = \n", "", " Para three . \n",
    ]
    with_blanks = " \n = A = \n \n Para . \n"
    assert wikitext2_rows_from_raw(with_blanks) == ["", " = A = \n", "", " Para . \n"]


def test_wikitext2_test_text_local(data_root):
    text, origin = wikitext2_test_text("auto", data_root)  # tests run with HF_HUB_OFFLINE=1
    assert origin == f"local:{data_root / 'wikitext-2-raw/wiki.test.raw'}"
    assert text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English")
    assert "\r" not in text
    with pytest.raises(DataNotAvailableError, match=r"wiki\.test\.raw"):
        wikitext2_test_text("hub", data_root)
    with pytest.raises(ValueError, match="auto, hub, local"):
        wikitext2_test_text("web", data_root)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("style", ["windows", "concat"])
def test_calibration_shapes_and_determinism(tokenizer, data_root, style):
    a = get_calibration(tokenizer, "wiki_vital_en", nsamples=4, seqlen=64, style=style, data_root=data_root)
    assert a.shape == (4, 64) and a.dtype == torch.long
    b = get_calibration(tokenizer, "wiki_vital_en", nsamples=4, seqlen=64, style=style, data_root=data_root)
    assert torch.equal(a, b)
    default = get_calibration(
        tokenizer, "wiki_vital_en", nsamples=4, seqlen=64, style=style, seed=DEFAULT_SEEDS[style], data_root=data_root
    )
    assert torch.equal(a, default)
    other = get_calibration(tokenizer, "wiki_vital_en", nsamples=4, seqlen=64, style=style, seed=7, data_root=data_root)
    assert not torch.equal(a, other)


def test_windows_match_reference_loop(tokenizer, long_docs):
    """Same draws as the Wanda / SparseGPT ``get_c4`` loop."""
    docs = load_local_documents(long_docs)
    nsamples, seqlen, seed = 5, 128, 3
    random.seed(seed)
    expected = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tokenizer(docs[i], return_tensors="pt")
            if enc.input_ids.shape[1] > seqlen:
                break
        start = random.randint(0, enc.input_ids.shape[1] - seqlen - 1)
        expected.append(enc.input_ids[0, start : start + seqlen])
    got = get_calibration(tokenizer, str(long_docs), nsamples=nsamples, seqlen=seqlen, seed=seed)
    assert torch.equal(got, torch.stack(expected))


def test_windows_fallback_to_stream(tokenizer, tmp_path):
    """Documents all shorter than seqlen: windows come from the joined stream, no endless loop."""
    docs = [f"Short paragraph number {i} about nothing much." for i in range(200)]
    path = tmp_path / "short.txt"
    path.write_text("\n\n".join(docs))
    ids = get_calibration(tokenizer, str(path), nsamples=6, seqlen=100, seed=0)
    stream = tokenizer("\n\n".join(docs), return_tensors="pt").input_ids[0].tolist()
    assert ids.shape == (6, 100)
    for row in ids.tolist():
        assert any(stream[s : s + 100] == row for s in range(len(stream) - 99))


def test_concat_style(tokenizer, long_docs):
    docs = load_local_documents(long_docs)
    ids = get_calibration(tokenizer, str(long_docs), nsamples=3, seqlen=300, style="concat", seed=42)
    assert ids.shape == (3, 300)
    first = torch.Generator().manual_seed(42)
    pick = int(torch.randint(0, len(docs), (1,), generator=first).item())
    assert tokenizer.decode(ids[0]).startswith(docs[pick][:40])
    with pytest.raises(ValueError, match="ran out of documents"):
        get_calibration(tokenizer, str(long_docs), nsamples=40, seqlen=300, style="concat")


def test_calibration_validation(tokenizer, data_root):
    with pytest.raises(ValueError, match="windows, concat"):
        get_calibration(tokenizer, "wiki_vital_en", 2, 16, style="random")
    with pytest.raises(ValueError, match="nsamples"):
        get_calibration(tokenizer, "wiki_vital_en", 0, 16)
    with pytest.raises(ValueError, match="seqlen"):
        get_calibration(tokenizer, "wiki_vital_en", 2, -1)


def test_calibration_sources_offline(tokenizer, data_root):
    with pytest.raises(DataNotAvailableError, match="wiki_vital_en"):
        get_calibration(tokenizer, "c4", 2, 16)
    with pytest.raises(DataNotAvailableError, match="wiki_vital_en"):
        get_calibration(tokenizer, "wikitext2", 2, 16)
    with pytest.raises(DataNotAvailableError, match="unknown calibration source"):
        get_calibration(tokenizer, "pile", 2, 16)
    corpus = load_calibration_corpus("calib/wiki_vital_en.txt", data_root)  # relative to the data root
    assert len(corpus.documents) > 10_000 and corpus.origin.startswith("local:")


@pytest.mark.parametrize("style", ["windows", "concat"])
def test_calibration_with_bos_on_every_sequence(tokenizer, data_root, style):
    plain = get_calibration(tokenizer, source="wiki_vital_en", nsamples=4, seqlen=64, style=style, seed=1,
                            data_root=data_root)
    ids = get_calibration(tokenizer, source="wiki_vital_en", nsamples=4, seqlen=64, style=style, seed=1,
                          data_root=data_root, bos_per_window=True)
    assert ids.shape == (4, 64) and (ids[:, 0] == tokenizer.bos_token_id).all()
    moved = plain[:, 0] != tokenizer.bos_token_id
    assert torch.equal(ids[moved, 1:], plain[moved, :-1]) and torch.equal(ids[~moved], plain[~moved])
