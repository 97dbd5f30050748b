"""Load a causal language model and its tokenizer from a local folder or a hub id.

Every stage that reads a model goes through :func:`load_causal_lm`, so the two
safety rules hold everywhere: custom model code runs only when the caller says
so (``trust_remote_code``), and pickled ``.bin`` weights, which can execute code
when unpickled, are refused unless the caller allows them (``allow_pickle``).
The torch settings every stage runs its model under (CPU threads, device) are
here too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from domainllm.errors import DataError

log = logging.getLogger(__name__)

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads to the job's cores (None keeps torch's default).

    More threads than free cores makes every matrix product wait on spinning
    workers: on a shared 2-core machine a step took 5x longer with 2 threads.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, int(threads)))


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def weight_format(folder: str | os.PathLike) -> str | None:
    """Return ``"safetensors"``, ``"pickle"`` or None for the weights found in ``folder``."""
    p = Path(folder)
    if any((p / name).is_file() for name in SAFE_WEIGHTS) or any(p.glob("*.safetensors")):
        return "safetensors"
    if any((p / name).is_file() for name in PICKLE_WEIGHTS) or any(p.glob("*.bin")):
        return "pickle"
    return None


def looks_local(path: str) -> bool:
    """Whether ``path`` means a local folder: it exists, or is not shaped like a hub id.

    A hub id is ``name`` or ``org/name``; an absolute path, one starting with
    ``.`` or ``~``, or one with more than one ``/`` is a local path. Nothing is
    looked up on the network: the workflow calls this while parsing.
    """
    if os.path.exists(os.path.expanduser(path)):
        return True
    return (
        os.path.isabs(path)
        or path.startswith((".", "~"))
        or path.count("/") > 1
        or os.sep != "/"
        and os.sep in path
    )


def check_model_folder(path: str | os.PathLike, *, allow_pickle: bool = False) -> None:
    """Raise DataError unless ``path`` is a folder with a config and acceptable weights."""
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"{p}: model path is not a folder")
    if not (p / "config.json").is_file():
        raise DataError(f"{p}: no config.json in the model folder")
    fmt = weight_format(p)
    if fmt is None:
        raise DataError(
            f"{p}: no model weights (expected model.safetensors or "
            "model.safetensors.index.json with its shards)"
        )
    if fmt == "pickle" and not allow_pickle:
        raise DataError(
            f"{p}: only pickled .bin weights found; unpickling can run arbitrary code. "
            "Convert them to safetensors, or set allow_pickle: true for this candidate "
            "if you trust the files"
        )


def load_causal_lm(
    path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    dtype=None,
):
    """Load ``(model, tokenizer)`` from a local save_pretrained folder or a hub id.

    Args:
        path: a local folder, or a hub id (``org/name``) resolved by ``from_pretrained``.
        trust_remote_code: run custom modelling code shipped with the model; only
            ever set from the caller's configuration.
        allow_pickle: accept pickled ``.bin`` weights when no safetensors exist.
        dtype: torch dtype (or ``"auto"``) to load the weights in; None keeps the
            transformers default.

    Returns:
        The model in eval mode and its tokenizer. A tokenizer without a pad token
        gets its eos token as pad (batching needs one; labels never use it).

    Raises:
        DataError: naming the folder, when it is missing, has no config or weights,
            or has only pickled weights and ``allow_pickle`` is false.
    """
    path = os.path.expanduser(str(path))
    if os.path.exists(path):
        check_model_folder(path, allow_pickle=allow_pickle)
    elif looks_local(path):
        raise DataError(f"{path}: model folder does not exist")
    # Imported after the checks: a bad folder is refused in a second, not after torch loads.
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    # use_safetensors=True makes from_pretrained refuse .bin even for hub ids;
    # None (allow_pickle) still prefers safetensors where both exist.
    use_safetensors = None if allow_pickle else True
    log.info(
        "loading %s (trust_remote_code=%s, allow_pickle=%s)", path, trust_remote_code, allow_pickle
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, use_safetensors=use_safetensors, **kwargs
        )
    except OSError as e:
        raise DataError(f"{path}: cannot load the model: {e}") from e
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


# Text any tokenizer turns into at least one token (unknown tokens count); full-width
# digits, as Japanese filings write them, which NFKC normalisation turns into ASCII.
PROBE_TEXT = "当社の売上高は前年比１２％増加した。Revenue grew 12%."
# SentencePiece model files as transformers' tokenizer classes name them.
SPM_FILES = ("tokenizer.model", "spm.model", "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained(path)``, refusing a tokenizer that encodes text to nothing.

    transformers reads a SentencePiece ``tokenizer.model`` (or ``spm.model``) through
    protobuf; without it, it can fall back to a tokenizer with an empty vocabulary that
    encodes every text to zero tokens, and every metric after it would be silently wrong.

    Raises:
        DataError: naming ``path``, when a probe text encodes to no tokens.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if not tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]:
        raise DataError(
            f"{path}: the tokenizer encodes text to no tokens ({type(tokenizer).__name__}); "
            "a SentencePiece tokenizer.model needs the protobuf package to be read"
        )
    check_sentencepiece(path, tokenizer)
    return tokenizer


def check_sentencepiece(path: str | os.PathLike, tokenizer) -> bool:
    """Warn when transformers encodes a SentencePiece-only folder unlike sentencepiece does.

    A folder with a SentencePiece model and no ``tokenizer.json`` is converted by
    transformers, which does not always keep the model's behaviour: its DeBERTa-v2
    class drops the model's NFKC normalisation (full-width ``１２％`` become unknown
    tokens), its Llama class assumes byte-fallback pieces (unknown characters vanish).
    The pipeline trains and runs with transformers' reading; the warning says that it
    differs from the model's own. Folders with a ``tokenizer.json`` are not checked.

    Returns:
        False when both encodings of :data:`PROBE_TEXT` differ, else True.
    """
    folder = Path(path)
    model = next((folder / f for f in SPM_FILES if (folder / f).is_file()), None)
    if model is None or (folder / "tokenizer.json").is_file():
        return True
    try:
        import sentencepiece
    except ImportError:
        return True
    reference = sentencepiece.SentencePieceProcessor(model_file=str(model))
    ours = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    theirs = reference.encode(PROBE_TEXT)
    if ours == theirs:
        return True
    log.warning(
        "%s: transformers' %s encodes %r as %s, sentencepiece reading %s as %s; the "
        "pipeline uses transformers' reading (selection's lost_char_rate shows what it costs)",
        folder,
        type(tokenizer).__name__,
        PROBE_TEXT,
        tokenizer.convert_ids_to_tokens(ours),
        model.name,
        [reference.id_to_piece(i) for i in theirs],
    )
    return False


def load_for_inference(
    path: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    dtype=None,
    device: str | None = None,
):
    """:func:`load_causal_lm`, with the model moved to ``device`` (None: :func:`default_device`).

    Returns:
        ``(model, tokenizer)``, the model in eval mode on the device.
    """
    model, tokenizer = load_causal_lm(
        path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, dtype=dtype
    )
    model.to(device or default_device())
    return model, tokenizer
