"""Per-text memory: each absorbed text keeps its own one-step update, and a query is answered with the update that
raises the query's own tokens most.

Several texts merged into one state interfere: on SmolLM2 the step stores four texts but loses which answer belongs to
which question (docs/results.md, "Where do four-text answers go wrong?"). Kept apart, each text's update is the one
the checkpoint was meta-trained to make, and the question picks it: a question about a text repeats what the text
says (a name, a title), which that text's update has made likely. Only the gains count: an update also makes the
text's own continuation likely where the question goes on differently ("Tara Kowalski" + "?" instead of " is a
florist"), and that loss says nothing about which text is asked about. No answer is read to choose; the cost is one
pass over the query per stored text plus one without any, and one weight copy per text.
"""

from __future__ import annotations

import torch
from torch import nn

from .fast_weights import FastWeights, use_fast_weights
from .inner import position_ids_from_mask
from .losses import token_logprobs


@torch.no_grad()
def row_token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each row's tokens after its first, `[rows, length - 1]` (0 where padding is involved)."""
    positions = position_ids_from_mask(attention_mask)  # as `generate` counts them for left-padded prompts
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, :-1]
    logprobs = token_logprobs(logits, input_ids[:, 1:])
    return logprobs * (attention_mask[:, 1:] * attention_mask[:, :-1]).to(logprobs.dtype)


def likelihood_gain(
    model: nn.Module, state: FastWeights, input_ids: torch.Tensor, attention_mask: torch.Tensor, without: torch.Tensor
) -> torch.Tensor:
    """Per row: the sum over its tokens of how much `state` raises their log-probability above `without`'s (the
    model with no update), losses ignored."""
    with use_fast_weights(state):
        gains = row_token_logprobs(model, input_ids, attention_mask) - without
    return gains.clamp(min=0).sum(-1)


def route(
    model: nn.Module, states: FastWeights, input_ids: torch.Tensor, attention_mask: torch.Tensor, texts: int
) -> tuple[FastWeights, torch.Tensor]:
    """Each row's state: of its group's `texts` states, the one that raises the row's own tokens most.

    `states` holds one state per text, `texts` consecutive states per group; the rows of `input_ids` split into as
    many groups, in the same order (row `r` belongs to group `r // (rows // groups)`). Returns per-row fast weights
    and the chosen text of each row (its position in its group). Ties go to the earlier text.
    """
    if not isinstance(texts, int) or texts < 1 or states.num_tasks % texts:
        raise ValueError(f"{states.num_tasks} states do not split into groups of texts={texts!r}.")
    groups = states.num_tasks // texts
    rows = input_ids.shape[0]
    if rows % groups:
        raise ValueError(f"{rows} rows do not split into the {groups} groups of the states.")
    rows_per_group = rows // groups
    without = row_token_logprobs(model, input_ids, attention_mask)  # the weights the updates were made from
    scores = []
    for position in range(texts):
        # The position-th state of every group, serving that group's rows: strided views, no copy.
        candidate = FastWeights(states.modules, [t[position::texts] for t in states.tensors], rows_per_group)
        scores.append(likelihood_gain(model, candidate, input_ids, attention_mask, without))
    choice = torch.stack(scores, dim=-1).argmax(dim=-1)
    group_start = torch.arange(rows, device=choice.device) // rows_per_group * texts
    index = group_start + choice
    return FastWeights(states.modules, [t[index] for t in states.tensors]), choice
