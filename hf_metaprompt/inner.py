"""The inner (absorbing) update: plain next-token loss on the context, one SGD step per task, differentiable."""

from __future__ import annotations

import torch
from torch import nn

from .fast_weights import AdaptedModules, FastWeights, use_fast_weights
from .losses import sequence_nll

# Attention implementations whose kernels have a double backward (the inner forward is differentiated twice).
DOUBLE_BACKWARD_ATTENTION = ("eager", "sdpa")


def check_attention_supports_meta_gradient(model: nn.Module, first_order: bool) -> None:
    """Fail early, with the fix, where the inner forward would hit a kernel without double backward."""
    if first_order:
        return
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if implementation not in DOUBLE_BACKWARD_ATTENTION:
        raise ValueError(
            f"attn_implementation={implementation!r} has no double backward, which second-order meta-gradients "
            "need through the inner step. Load the model with attn_implementation='sdpa' (the inner pass then uses "
            "the math kernel) or 'eager', or set first_order=True."
        )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, so a padded row sees the positions it would see alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def context_losses(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-task mean next-token loss of the contexts (the inner objective)."""
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    ).logits
    return sequence_nll(logits, input_ids, attention_mask)


def inner_update(
    model: nn.Module,
    modules: AdaptedModules,
    inner_lrs: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steps: int = 1,
    create_graph: bool = True,
    first_order: bool = False,
    start: FastWeights | None = None,
    rows_per_task: int = 1,
) -> tuple[FastWeights, torch.Tensor]:
    """Take `steps` SGD steps on each task's context; returns the per-task fast weights and first-step losses.

    `create_graph=True` keeps the update differentiable (second order) unless `first_order`, which treats the
    gradients as constants while still letting the outer loss reach the weights and the learning rates. `start`
    continues from earlier fast weights (absorbing several texts one after another) instead of the shared weights;
    with `create_graph=True` the meta-gradient flows back through `start` into the steps that made it.
    `rows_per_task` > 1 makes each run of that many consecutive contexts one task whose loss is their sum: one
    step on several texts at once.
    """
    first_losses = None
    with torch.enable_grad():  # also under `no_grad` (evaluation, absorbing): the inner step needs its gradient
        if start is None:
            if input_ids.shape[0] % rows_per_task:
                raise ValueError(f"{input_ids.shape[0]} contexts do not split into tasks of {rows_per_task}.")
            fast_weights = modules.initial(input_ids.shape[0] // rows_per_task).for_rows(rows_per_task)
        elif create_graph and any(t.requires_grad for t in start.tensors):
            fast_weights = start  # part of the meta-graph: keep it connected
        else:
            fast_weights = start.requires_grad_()
        for _ in range(steps):
            with use_fast_weights(fast_weights, math_attention=create_graph and not first_order):
                losses = context_losses(model, input_ids, attention_mask)
            grads = torch.autograd.grad(
                losses.sum(), fast_weights.tensors, create_graph=create_graph and not first_order
            )
            if first_order or not create_graph:
                grads = [g.detach() for g in grads]
            fast_weights = fast_weights.sgd_step(grads, inner_lrs).for_rows(rows_per_task)
            if first_losses is None:
                first_losses = losses.detach()
    if not create_graph:
        fast_weights = fast_weights.detach()
    return fast_weights.for_rows(1), first_losses
