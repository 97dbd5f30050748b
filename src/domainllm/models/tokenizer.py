"""Load a tokenizer as its files define it, not as transformers' class rebuilds it.

transformers 5 builds each tokenizer class's pipeline (normaliser, pre-tokeniser,
model, decoder) in code and fills in the vocabulary from the files. Where a
model's files say otherwise, the files lose, silently:

- ``tokenizer.json`` with a normaliser or model its class does not build is
  overridden: DeBERTa-v2 swaps a SentencePiece ``Precompiled`` (NFKC) normaliser
  for NFC, so full-width ``１２％`` become unknown tokens; Llama rebuilds any
  model as byte-fallback BPE, so a Unigram vocabulary is split into characters
  and unknown characters vanish.
- a SentencePiece-only folder (``tokenizer.model``, ``spm.model``; no
  ``tokenizer.json``) is converted without the model's normalisation (DeBERTa-v2)
  or with byte fallback the model does not have (Llama).
- without protobuf, a SentencePiece model is read as an empty vocabulary that
  encodes every text to nothing.

:func:`load_tokenizer` is what every stage loads a tokenizer with. It loads
``tokenizer.json`` as written where the class would change it, puts back what the
SentencePiece model says where there is no ``tokenizer.json`` (and checks the
result against the sentencepiece library), and refuses a tokenizer that encodes
text to nothing. Where it had to step in, it returns transformers' generic
``PreTrainedTokenizerFast``, which saves as ``TokenizersBackend``: a folder the
pipeline writes afterwards is read as written by any transformers 5 loader
(vLLM's too), not only by this one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from domainllm.errors import DataError

log = logging.getLogger(__name__)

# Text any tokenizer turns into at least one token (unknown tokens count); full-width
# digits, as Japanese filings write them, which NFKC normalisation turns into ASCII.
PROBE_TEXT = "当社の売上高は前年比１２％増加した。Revenue grew 12%."
# SentencePiece model files as transformers' tokenizer classes name them.
SPM_FILES = ("tokenizer.model", "spm.model", "spiece.model", "sentencepiece.bpe.model")
# The parts of a tokenizers pipeline that decide the ids of a text.
PIPELINE = ("normalizer", "pre_tokenizer", "model", "decoder")


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False):
    """Load the tokenizer of a local folder or hub id as its files define it.

    A tokenizer whose code comes with the model (``trust_remote_code``) is left as its
    code builds it: that code, not transformers', is the model author's definition.

    Raises:
        DataError: naming ``path``, when the tokenizer encodes a probe text to no tokens.
    """
    from transformers import AutoTokenizer

    path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    written = None if trust_remote_code else tokenizer_file(path)
    if written is not None:
        tokenizer = as_written(path, tokenizer, written)
    else:
        model = None if trust_remote_code else sentencepiece_file(path)
        if model is not None:
            if repair_from_sentencepiece(tokenizer, model):
                tokenizer = generic(tokenizer, path)
            check_sentencepiece(tokenizer, model)
    if not tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise DataError(
            f"{path}: the tokenizer encodes text to no tokens ({type(tokenizer).__name__}); "
            "a SentencePiece tokenizer.model needs the protobuf package to be read"
        )
    return tokenizer


def tokenizer_file(path: str) -> Path | None:
    """The ``tokenizer.json`` of a folder, or of a hub id already in the local cache."""
    p = Path(path)
    if p.is_dir():
        return p / "tokenizer.json" if (p / "tokenizer.json").is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(
            path,
            "tokenizer.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        return None
    return Path(found) if found else None


def sentencepiece_file(path: str) -> Path | None:
    """The SentencePiece model file of a local folder, if it has one."""
    p = Path(path)
    return next((p / f for f in SPM_FILES if (p / f).is_file()), None) if p.is_dir() else None


def as_serialised(written: Path) -> dict:
    """``tokenizer.json`` as this tokenizers version writes it (parsed and written back),
    so that format differences between versions do not count as changes."""
    from tokenizers import Tokenizer

    return json.loads(Tokenizer.from_file(str(written)).to_str())


def pipeline_changes(tokenizer, as_file: dict) -> list[str]:
    """The parts of :data:`PIPELINE` where ``tokenizer`` differs from ``as_file``
    (:func:`as_serialised`)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    loaded = json.loads(backend.to_str())
    return [part for part in PIPELINE if loaded.get(part) != as_file.get(part)]


def as_written(path: str, tokenizer, written: Path):
    """``tokenizer``, or the file's own pipeline where the class changed it.

    Returns:
        ``tokenizer`` when its pipeline is the file's; otherwise the generic
        ``PreTrainedTokenizerFast`` of the same folder (tokenizer.json as written, the
        special tokens and chat template of tokenizer_config.json).

    Raises:
        DataError: the generic loader does not give the file's pipeline either.
    """
    as_file = as_serialised(written)
    changed = pipeline_changes(tokenizer, as_file)
    if not changed:
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    generic = PreTrainedTokenizerFast.from_pretrained(path)
    still = pipeline_changes(generic, as_file)
    if still:
        raise DataError(
            f"{written}: transformers loads this tokenizer with a different {', '.join(still)} "
            "than the file defines"
        )
    log.warning(
        "%s: transformers' %s replaces the %s of %s; using it as written",
        path,
        type(tokenizer).__name__,
        ", ".join(changed),
        written.name,
    )
    return generic


def generic(tokenizer, path: str):
    """``tokenizer`` (pipeline, special tokens, chat template) as the generic fast class."""
    import tempfile

    from transformers import PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        out = PreTrainedTokenizerFast.from_pretrained(tmp)
    out.name_or_path = path
    return out


def repair_from_sentencepiece(tokenizer, model_file: Path) -> list[str]:
    """Put back what transformers' conversion of a SentencePiece model left out.

    Two known losses, each mended only when the model file says so: the model's
    precompiled normalisation (``nmt_nfkc`` and the like) when the converted
    normaliser lacks it, and unknown-character handling when a BPE model without
    byte-fallback pieces was converted with byte fallback (unknown characters would
    vanish instead of becoming the unknown token).

    Returns:
        What was mended, one line per change (empty when nothing was).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return []
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import Tokenizer, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    loaded = json.loads(backend.to_str())
    fixed = []
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap and "Precompiled" not in json.dumps(loaded.get("normalizer")):
        rest = [backend.normalizer] if backend.normalizer is not None else []
        backend.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), *rest])
        fixed.append(f"the model's {proto.normalizer_spec.name} normalisation")
    model = loaded["model"]
    if (
        model.get("type") == "BPE"
        and model.get("byte_fallback")
        and not proto.trainer_spec.byte_fallback
    ):
        model["byte_fallback"] = False
        model["unk_token"] = proto.trainer_spec.unk_piece or "<unk>"
        backend.model = Tokenizer.from_str(json.dumps(loaded)).model
        fixed.append(f"unknown characters as {model['unk_token']} (the model has no byte fallback)")
    if fixed:
        log.warning(
            "%s: transformers' %s left out %s; put back from %s",
            model_file.parent,
            type(tokenizer).__name__,
            " and ".join(fixed),
            model_file.name,
        )
    return fixed


def check_sentencepiece(tokenizer, model_file: Path) -> bool:
    """Warn when ``tokenizer`` encodes :data:`PROBE_TEXT` unlike the sentencepiece library.

    Returns:
        False when the encodings differ, else True.
    """
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = reference.encode(PROBE_TEXT)
    if ours == theirs:
        return True
    log.warning(
        "%s: transformers' %s encodes %r as %s, sentencepiece reading %s as %s; the pipeline "
        "uses transformers' reading (selection's lost_char_rate shows what it costs)",
        model_file.parent,
        type(tokenizer).__name__,
        PROBE_TEXT,
        tokenizer.convert_ids_to_tokens(ours),
        model_file.name,
        [reference.id_to_piece(i) for i in theirs],
    )
    return False
