"""Scaling out: DDP and DeepSpeed ZeRO-2 train exactly like one process; sharding we cannot support fails early.

The multi-process runs start `distributed_script.py` through the real launchers (`torchrun`, `accelerate launch`) and
compare what it learned with the same script run in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _tokenizer
from distributed_script import train
from safetensors.torch import load_file
from test_trainer import config, peaky_model
from transformers import HfArgumentParser

from hf_metaprompt import MetaDistillConfig, MetaDistillTrainer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("distributed_script.py")
ZERO2_CONFIG = ROOT / "examples" / "accelerate_configs" / "deepspeed_zero2.yaml"
STEPS = 3
# Plain SGD without clipping: a wrongly scaled gradient shows one to one in the weights (Adam would hide most of it).
SGD = {"optim": "sgd", "learning_rate": 0.1, "lr_scheduler_type": "constant", "max_grad_norm": 0.0}


def launch(launcher: list[str], output_dir: Path, args: dict, **env: str) -> None:
    """Run `distributed_script.py` under a launcher, in an environment that leaves nothing to chance: the ranks
    import this checkout's `hf_metaprompt` (an editable install may point at another checkout: the ranks would then
    train other code than the reference), run one thread each (they share the cores, and the reference runs with one
    too) and hash with a fixed seed."""
    command = [sys.executable, "-m", *launcher, str(SCRIPT), str(output_dir), "--args", json.dumps(args)]
    python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **env}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    for record in output_dir.glob("rank*.json"):
        imported = Path(json.loads(record.read_text())["hf_metaprompt"]).resolve()
        assert imported.is_relative_to(ROOT), f"{record.name} ran {imported}, not the checkout under test {ROOT}"


def train_in_process(output_dir: Path, **overrides) -> None:
    """The one-process reference, with one thread like each launched rank (same kernels, same reduction order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(output_dir, **overrides)
    finally:
        torch.set_num_threads(threads)


def rank_record(output_dir: Path, rank: int) -> dict:
    return json.loads((output_dir / f"rank{rank}.json").read_text())


def assert_same_training(output_dir: Path, reference_dir: Path) -> None:
    """Same per-step losses, adapter weights and learned inner LRs, to float tolerance; and they did move."""
    losses = json.loads((output_dir / "result.json").read_text())["losses"]
    reference_losses = json.loads((reference_dir / "result.json").read_text())["losses"]
    assert len(losses) == STEPS
    assert losses == pytest.approx(reference_losses, rel=1e-5)
    learned, reference = (
        load_file(output_dir / "adapter.safetensors"),
        load_file(reference_dir / "adapter.safetensors"),
    )
    assert learned.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(learned[name], reference[name], rtol=1e-5, atol=1e-6, msg=name)
    initial_log_lr = torch.tensor(0.5).log()  # `inner_lr` of `test_trainer.config`
    assert not torch.allclose(reference["log_inner_lrs"], initial_log_lr.expand_as(reference["log_inner_lrs"]))
    assert all(reference[name].abs().max() > 0 for name in reference if "lora_B" in name)  # LoRA B starts at 0


def test_ddp_two_processes_train_like_one_with_twice_the_batch(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train_in_process(one, per_device_train_batch_size=4, max_steps=STEPS, **SGD)
    launch(
        ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
        two,
        {"per_device_train_batch_size": 2, "max_steps": STEPS, **SGD},
        ACCELERATE_USE_CPU="true",  # gloo DDP on CPU
    )
    ranks = [rank_record(two, rank) for rank in (0, 1)]
    assert [record["world_size"] for record in ranks] == [2, 2]
    # Together, the two ranks ran exactly the tasks of each step of the one-process run (so the comparison means
    # something), each rank half of them.
    reference_batches = rank_record(one, 0)["batches"]
    assert len(reference_batches) == STEPS
    for step, reference_batch in enumerate(reference_batches):
        assert [len(record["batches"][step]) for record in ranks] == [2, 2]
        assert sorted(ranks[0]["batches"][step] + ranks[1]["batches"][step]) == sorted(reference_batch)
    assert_same_training(two, one)


@pytest.mark.slow  # DeepSpeed JIT-compiles its CPU shared-memory communication op on first use (~1-2 min)
def test_deepspeed_zero2_trains_like_plain_training(tmp_path):
    pytest.importorskip("deepspeed")
    plain, zero2 = tmp_path / "plain", tmp_path / "zero2"
    # The default AdamW with gradient clipping: what DeepSpeed takes over (partitioned state, its own clipping).
    train_in_process(plain, per_device_train_batch_size=4, max_steps=STEPS)
    launch(
        ["accelerate.commands.launch", "--config_file", str(ZERO2_CONFIG), "--num_processes", "1"],
        zero2,
        {"per_device_train_batch_size": 4, "max_steps": STEPS},
    )
    result = json.loads((zero2 / "result.json").read_text())
    assert result["zero_stage"] == 2
    assert_same_training(zero2, plain)


@pytest.fixture
def no_deepspeed_leftovers():
    """DeepSpeed arguments register a global "ZeRO-3 is on" config; drop it so later `from_pretrained` calls don't
    partition their models."""
    yield
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def write_zero3_config(tmp_path: Path) -> Path:
    path = tmp_path / "zero3.json"
    config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto"}
    path.write_text(json.dumps(config))
    return path


def test_zero3_from_the_command_line_is_refused(tmp_path, no_deepspeed_leftovers):
    pytest.importorskip("deepspeed")
    (args,) = HfArgumentParser(MetaDistillConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--report_to", "none", "--deepspeed", str(write_zero3_config(tmp_path))]
    )
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        MetaDistillTrainer(model=peaky_model(), args=args, processing_class=_tokenizer(bos=True))


@pytest.mark.parametrize("source", ["config_file", "zero_stage"])
def test_zero3_from_an_accelerate_launch_config_is_refused(tmp_path, monkeypatch, no_deepspeed_leftovers, source):
    """`accelerate launch` passes DeepSpeed settings through the environment: no `--deepspeed` argument is set."""
    pytest.importorskip("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if source == "config_file":
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(write_zero3_config(tmp_path)))
    else:
        monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    args = config(tmp_path)
    assert args.deepspeed is None
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        MetaDistillTrainer(model=peaky_model(), args=args, processing_class=_tokenizer(bos=True))


def test_fsdp_from_the_command_line_is_refused(tmp_path):
    (args,) = HfArgumentParser(MetaDistillConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--report_to", "none", "--use_cpu", "--fsdp", "full_shard"]
    )
    with pytest.raises(ValueError, match="FSDP is not supported"):
        MetaDistillTrainer(model=peaky_model(), args=args, processing_class=_tokenizer(bos=True))
