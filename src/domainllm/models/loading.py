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
    from domainllm.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


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
