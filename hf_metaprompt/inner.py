"""The inner (absorbing) update: plain next-token loss on the context, one SGD step per task, differentiable."""

from __future__ import annotations

import torch
from torch import nn

from .chunked_nll import chunked_token_nll
from .fast_weights import AdaptedModules, FastWeights, use_fast_weights
from .losses import sequence_nll
from .tokens import CAPITALISED, OPENS_WORD

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


# Causal LMs whose logits are exactly `lm_head(last_hidden_state)` (no soft-capping or scaling after the head).
PLAIN_HEAD_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def context_losses(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    chunked_vocab: bool = False,
    reversed_weight: float = 0.0,
    word_classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The inner objective per task: the contexts' mean next-token loss, plus `reversed_weight` times that of the
    contexts read backwards (`reversed_tokens`: by token, or by entity with the tokenizer's `word_classes`).

    Both readings go through the model in one pass (twice the rows, half the kernel launches), each row followed by
    its backwards reading: fast weights active around this call must serve `2 * k` consecutive rows per task where
    they would serve `k` (`context_readings`).
    """
    if not reversed_weight:
        return next_token_losses(model, input_ids, attention_mask, chunked_vocab)
    bos_token_id = getattr(getattr(_base_model(model), "config", None), "bos_token_id", None)
    backwards = reversed_tokens(input_ids, attention_mask, bos_token_id, word_classes)
    both = torch.stack([input_ids, backwards], 1).flatten(0, 1)
    losses = next_token_losses(model, both, attention_mask.repeat_interleave(2, 0), chunked_vocab).view(-1, 2)
    return losses[:, 0] + reversed_weight * losses[:, 1]


def context_readings(reversed_weight: float) -> int:
    """Rows `context_losses` runs per context: the text, and its backwards reading where it has a weight."""
    return 2 if reversed_weight else 1


def reversed_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    bos_token_id: int | None = None,
    word_classes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each row's text read backwards, a leading BOS kept first and the padding where it was.

    Next-token loss on it predicts what a text says first from what it says after (reverse training, Golovneva
    et al., 2024), which the forward loss never does. Token by token by default; with `word_classes`
    (`tokens.word_classes`), unit by unit, where a unit is a word, or a run of capitalised words kept in reading
    order: "Hana Santos is a sculptor." becomes ". sculptor a is Hana Santos", the name whole and after its
    description (entity-preserving reversal; token reversal would give "... is Santos Hana").
    """
    length = input_ids.shape[1]
    mask = attention_mask.long()
    first = (mask.cumsum(-1) == 0).sum(-1, keepdim=True)  # left padding; a row's tokens are contiguous
    last = first + mask.sum(-1, keepdim=True) - 1
    if bos_token_id is not None:
        first = first + (input_ids.gather(1, first.clamp(max=length - 1)) == bos_token_id).long()
    positions = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    inside = (positions >= first) & (positions <= last)
    if word_classes is None:
        return input_ids.gather(1, torch.where(inside, first + last - positions, positions))
    # Units in reverse order, each unit's tokens in reading order: sort inside positions by (-unit, position).
    units = _entity_units(input_ids, word_classes, inside, positions, first)
    order = (units.amax(-1, keepdim=True) - units) * length + positions
    order = torch.where(positions < first, positions - 4 * length**2, order)
    order = torch.where(positions > last, positions + 4 * length**2, order)
    return input_ids.gather(1, order.argsort(dim=-1))


def _entity_units(
    input_ids: torch.Tensor,
    word_classes: torch.Tensor,
    inside: torch.Tensor,
    positions: torch.Tensor,
    first: torch.Tensor,
) -> torch.Tensor:
    """Index of each token's unit: a new unit opens at a word (and where the text starts), except a capitalised word
    right after another."""
    classes = word_classes.to(input_ids.device)[input_ids]
    opens = inside & ((classes & OPENS_WORD).bool() | (positions == first))
    capital = opens & (classes & CAPITALISED).bool()
    # Where the word before each token opened (-1: none), found as a running maximum of word openings.
    opened = torch.where(opens, positions, -1).cummax(-1).values
    previous = torch.cat([torch.full_like(opened[:, :1], -1), opened[:, :-1]], -1)
    after_capital = (previous >= 0) & capital.gather(1, previous.clamp(min=0))
    return (opens & ~(capital & after_capital)).long().cumsum(-1)


def next_token_losses(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunked_vocab: bool = False
) -> torch.Tensor:
    """Per-task mean next-token loss of the contexts.

    `chunked_vocab` computes it from the decoder's hidden states with `chunked_token_nll` (same value and
    derivatives, no `[tokens, vocab]` tensor kept) where the model allows it: a plain, frozen output head.
    """
    position_ids = position_ids_from_mask(attention_mask)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    head = _frozen_plain_head(model) if chunked_vocab else None
    if head is None:
        return sequence_nll(model(**inputs, use_cache=False).logits, input_ids, attention_mask)
    hidden = _base_model(model).get_decoder()(**inputs, use_cache=False).last_hidden_state
    valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    counts = valid.sum(-1)
    if bool((counts == 0).any()):
        raise ValueError("Every context needs at least two tokens to take a next-token loss on.")
    # Only the predicting positions of real tokens go through the head: padding costs nothing.
    token_nll = chunked_token_nll(hidden[:, :-1][valid], head.weight, input_ids[:, 1:][valid])
    rows = valid.nonzero()[:, 0]
    totals = token_nll.new_zeros(input_ids.shape[0]).index_add(0, rows, token_nll)
    return totals / counts


def _frozen_plain_head(model: nn.Module) -> nn.Linear | None:
    base = _base_model(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES or not hasattr(base, "get_decoder"):
        return None
    if type(head) is not nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
    memory_efficient: bool = True,
    reversed_weight: float = 0.0,
    word_classes: torch.Tensor | None = None,
) -> tuple[FastWeights, torch.Tensor]:
    """Take `steps` SGD steps on each task's context; returns the per-task fast weights and first-step losses.

    `create_graph=True` keeps the update differentiable (second order) unless `first_order`, which treats the
    gradients as constants while still letting the outer loss reach the weights and the learning rates. `start`
    continues from earlier fast weights (absorbing several texts one after another) instead of the shared weights;
    with `create_graph=True` the meta-gradient flows back through `start` into the steps that made it.
    `rows_per_task` > 1 makes each run of that many consecutive contexts one task whose loss is their sum: one
    step on several texts at once.
    `memory_efficient` runs the inner forward with `memory_efficient_attention` and `chunked_token_nll` (the same
    meta-gradient in memory linear in the context length); False: math-kernel attention and full logits.
    `reversed_weight` adds the loss of the contexts read backwards (`context_losses`), by entity where
    `word_classes` is given.
    """
    first_losses = None
    second_order = create_graph and not first_order
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
            rows = fast_weights.for_rows(fast_weights.rows_per_task * context_readings(reversed_weight))
            with use_fast_weights(rows, math_attention=second_order, memory_efficient=memory_efficient):
                losses = context_losses(
                    model, input_ids, attention_mask, memory_efficient, reversed_weight, word_classes
                )
            grads = torch.autograd.grad(losses.sum(), fast_weights.tensors, create_graph=second_order)
            if first_order or not create_graph:
                grads = [g.detach() for g in grads]
            fast_weights = fast_weights.sgd_step(grads, inner_lrs).for_rows(rows_per_task)
            if first_losses is None:
                first_losses = losses.detach()
    if not create_graph:
        fast_weights = fast_weights.detach()
    return fast_weights.for_rows(1), first_losses


def absorb_groups(
    model: nn.Module,
    modules: AdaptedModules,
    inner_lrs: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    group: int,
    composition: str = "sequential",
    first_order: bool = False,
    second_order_texts: int | None = None,
    **step_kwargs,
) -> tuple[FastWeights, torch.Tensor]:
    """Each run of `group` consecutive contexts absorbed into one state that then serves the run's rows.

    `composition="sequential"`: the contexts one after another, each step from the weights the previous one left;
    `"additive"`: one step on their summed loss from the shared weights. Returns the fast weights and the first-step
    loss of every context, in row order. `first_order` and `step_kwargs` (steps, create_graph, ...) go to
    `inner_update`.
    `second_order_texts=K` truncates the sequential meta-gradient: the steps on all but the last K contexts are first
    order (their gradients constants; the meta-gradient still reaches the weights they started from), so the
    double backward's cost stops growing with the episode.
    """
    if input_ids.shape[0] % group:
        raise ValueError(f"{input_ids.shape[0]} contexts do not split into groups of {group}.")
    if group == 1 or composition == "additive":
        fast_weights, losses = inner_update(
            model,
            modules,
            inner_lrs,
            input_ids,
            attention_mask,
            first_order=first_order,
            rows_per_task=group,
            **step_kwargs,
        )
        return fast_weights.for_rows(group), losses
    fast_weights, losses = None, []
    truncated = group - second_order_texts if second_order_texts is not None else 0
    for position in range(group):
        rows = slice(position, None, group)  # the position-th context of every group
        fast_weights, step_losses = inner_update(
            model,
            modules,
            inner_lrs,
            input_ids[rows],
            attention_mask[rows],
            start=fast_weights,
            first_order=first_order or position < truncated,
            **step_kwargs,
        )
        losses.append(step_losses)
    return fast_weights.for_rows(group), torch.stack(losses, 1).flatten()
