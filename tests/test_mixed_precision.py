"""bf16 autocast (`--bf16`): the meta-learned parameters stay float32, the inner step accumulates in float32, and the
meta-gradient stays close to the float32 one."""

from __future__ import annotations

import pytest
import torch
from test_meta_gradient import TOKENIZER_BOS, batch_for, build, trainable
from test_trainer import adapter_state, make_trainer

from hf_metaprompt import FastWeights


def test_bf16_training_keeps_meta_parameters_and_inner_step_fp32(tmp_path, llama_tokenizer, monkeypatch):
    seen = {}
    sgd_step = FastWeights.sgd_step

    def recording_sgd_step(self, grads, lrs):
        updated = sgd_step(self, grads, lrs)
        seen["autocast"] = torch.is_autocast_enabled("cpu")
        seen["inner_step_dtypes"] = {t.dtype for t in (*grads, lrs, *updated.tensors)}
        return updated

    monkeypatch.setattr(FastWeights, "sgd_step", recording_sgd_step)
    trainer = make_trainer(tmp_path, llama_tokenizer, bf16=True, max_steps=3)
    base_layer = trainer.meta_model.model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    base_layer.register_forward_hook(lambda module, inputs, output: seen.__setitem__("base_dtype", output.dtype))
    before = adapter_state(trainer)
    trainer.train()
    after = adapter_state(trainer)

    # The base model really computed in bf16, inside the inner step too ...
    assert seen["autocast"]
    assert seen["base_dtype"] == torch.bfloat16
    # ... while the inner gradients, learning rates and per-task weights stayed float32,
    assert seen["inner_step_dtypes"] == {torch.float32}
    # and so did the adapter and the learned inner LRs, which trained to finite values.
    assert "log_inner_lrs" in after and any("lora_B" in name for name in after)
    for name, value in after.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value).all(), name
    assert not torch.equal(after["log_inner_lrs"], before["log_inner_lrs"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3
    assert all(torch.isfinite(torch.tensor(losses)))


# Qwen2 is left out: at its test point the float32 meta-gradient itself moves to cosine 0.9 under 0.1% noise on the
# base weights (an ill-conditioned point), so it cannot separate bf16 rounding from that sensitivity.
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("first_order", [False, True])
def test_bf16_meta_gradient_is_close_to_fp32(request, arch, first_order):
    tokenizer = request.getfixturevalue("llama_tokenizer" if TOKENIZER_BOS[arch] else "gpt2_tokenizer")
    meta = build(arch, dtype=torch.float32, first_order=first_order)
    batch = batch_for(tokenizer)

    def meta_gradient(autocast: bool) -> torch.Tensor:
        meta.zero_grad()
        # As in training: the forward (inner step included) under autocast, the backward outside it.
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = meta(**batch).loss
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in trainable(meta)])

    reference, bf16 = meta_gradient(autocast=False), meta_gradient(autocast=True)
    assert bf16.dtype == torch.float32
    assert not torch.allclose(bf16, reference, rtol=1e-4, atol=0)  # bf16 really was used
    # Measured: cosine 0.9995-0.9999 (relative error 1-3%) for the whole meta-gradient and for the inner LRs' part.
    assert torch.nn.functional.cosine_similarity(bf16, reference, dim=0) > 0.99
    lr_part = slice(-meta.log_inner_lrs.numel(), None)
    assert torch.nn.functional.cosine_similarity(bf16[lr_part], reference[lr_part], dim=0) > 0.99
