"""The losses against closed forms on two-token distributions, and their invariants on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_metaprompt.losses import (
    distillation_divergence,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sequence_nll,
    token_logprobs,
)

KINDS = ["forward_kl", "reverse_kl", "jsd"]
# Teacher p = (0.8, 0.2), student q = (0.5, 0.5): logits are log-probabilities, so softmax gives them back.
P, Q = (0.8, 0.2), (0.5, 0.5)


def _logits(probs: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor([math.log(x) for x in probs], dtype=torch.float64)


def _kl(p: tuple[float, ...], q: tuple[float, ...]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def _softmax(logits: tuple[float, ...]) -> tuple[float, ...]:
    total = sum(math.exp(x) for x in logits)
    return tuple(math.exp(x) / total for x in logits)


def _jsd(p: tuple[float, ...], q: tuple[float, ...], beta: float) -> float:
    mixture = tuple(beta * pi + (1 - beta) * qi for pi, qi in zip(p, q, strict=True))
    return beta * _kl(p, mixture) + (1 - beta) * _kl(q, mixture)


def _random_logits(*shape: int, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", KINDS)
def test_identical_inputs_give_zero(kind):
    logits = _random_logits(3, 5, 32)
    divergence = distillation_divergence(logits, logits.clone(), kind, temperature=1.5, beta=0.3)
    assert divergence.shape == (3, 5)
    torch.testing.assert_close(divergence, torch.zeros(3, 5), atol=1e-6, rtol=0)


def test_kl_closed_form_and_asymmetry():
    teacher, student = _logits(P), _logits(Q)
    forward, reverse = forward_kl(teacher, student), reverse_kl(teacher, student)
    assert forward.item() == pytest.approx(0.8 * math.log(1.6) + 0.2 * math.log(0.4), rel=1e-12)
    assert reverse.item() == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2), rel=1e-12)
    assert forward.item() == pytest.approx(0.1927, abs=1e-4)
    assert reverse.item() == pytest.approx(0.2231, abs=1e-4)  # KL is not symmetric


def test_temperature_divides_the_logits():
    teacher, student = (2.0, 0.0, -1.0), (0.0, 1.0, 0.5)
    temperature = 2.0
    soft_teacher = _softmax(tuple(x / temperature for x in teacher))
    soft_student = _softmax(tuple(x / temperature for x in student))
    teacher_t, student_t = torch.tensor(teacher, dtype=torch.float64), torch.tensor(student, dtype=torch.float64)
    expected = _kl(soft_teacher, soft_student)
    assert forward_kl(teacher_t, student_t, temperature).item() == pytest.approx(expected, rel=1e-12)
    assert reverse_kl(teacher_t, student_t, temperature).item() == pytest.approx(
        _kl(soft_student, soft_teacher), rel=1e-12
    )
    jsd = generalized_jsd(teacher_t, student_t, temperature, beta=0.3).item()
    assert jsd == pytest.approx(_jsd(soft_teacher, soft_student, 0.3), rel=1e-12)
    assert forward_kl(teacher_t, student_t).item() == pytest.approx(_kl(_softmax(teacher), _softmax(student)))
    assert forward_kl(teacher_t, student_t).item() > 1.5 * expected  # a softer temperature shrinks the divergence


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_closed_form(beta):
    jsd = generalized_jsd(_logits(P), _logits(Q), beta=beta).item()
    assert jsd == pytest.approx(_jsd(P, Q, beta), rel=1e-12)
    assert 0 < jsd < min(_kl(P, Q), _kl(Q, P))


def test_generalized_jsd_beta_edges_approach_the_scaled_kls():
    """β → 0: JSD ≈ β·KL(teacher‖student); β → 1: JSD ≈ (1-β)·KL(student‖teacher) (the other term is second order)."""
    teacher, student = _logits(P), _logits(Q)
    eps = 1e-6
    assert generalized_jsd(teacher, student, beta=eps).item() / eps == pytest.approx(
        forward_kl(teacher, student).item(), rel=1e-4
    )
    assert generalized_jsd(teacher, student, beta=1 - eps).item() / eps == pytest.approx(
        reverse_kl(teacher, student).item(), rel=1e-4
    )
    assert _kl(P, Q) != pytest.approx(_kl(Q, P), rel=1e-4)  # so the two edges are told apart


@pytest.mark.parametrize("kind", KINDS)
def test_divergences_are_non_negative(kind):
    teacher, student = _random_logits(4, 6, 50, seed=1), _random_logits(4, 6, 50, seed=2)
    divergence = distillation_divergence(teacher, student, kind, temperature=0.7, beta=0.2)
    assert divergence.shape == (4, 6)
    assert bool((divergence >= 0).all())
    assert divergence.min().item() > 1e-3  # random distributions differ everywhere


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_logits_are_upcast(kind):
    teacher, student = _random_logits(2, 3, 64, seed=3).bfloat16(), _random_logits(2, 3, 64, seed=4).bfloat16()
    divergence = distillation_divergence(teacher, student, kind, temperature=2.0, beta=0.3)
    assert divergence.dtype == torch.float32
    reference = distillation_divergence(teacher.double(), student.double(), kind, temperature=2.0, beta=0.3)
    torch.testing.assert_close(divergence.double(), reference, rtol=1e-5, atol=1e-6)
    # float64 stays float64
    assert distillation_divergence(teacher.double(), student.double(), kind).dtype == torch.float64


def test_distillation_divergence_dispatches_by_name():
    teacher, student = _random_logits(2, 4, 16, seed=5), _random_logits(2, 4, 16, seed=6)
    torch.testing.assert_close(
        distillation_divergence(teacher, student, "forward_kl", temperature=1.7), forward_kl(teacher, student, 1.7)
    )
    torch.testing.assert_close(
        distillation_divergence(teacher, student, "reverse_kl", temperature=1.7), reverse_kl(teacher, student, 1.7)
    )
    torch.testing.assert_close(
        distillation_divergence(teacher, student, "jsd", temperature=1.7, beta=0.2),
        generalized_jsd(teacher, student, 1.7, 0.2),
    )


def test_distillation_divergence_rejects_bad_input():
    logits = _random_logits(2, 4, 16)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 4, 16\) and \(2, 4, 17\).*vocabulary"):
        distillation_divergence(logits, _random_logits(2, 4, 17))
    with pytest.raises(ValueError, match="Unknown distillation loss 'kl'"):
        distillation_divergence(logits, logits, "kl")


def test_token_logprobs():
    logits, targets = _random_logits(2, 5, 11, seed=7), torch.randint(0, 11, (2, 5), generator=torch.Generator())
    expected = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    torch.testing.assert_close(token_logprobs(logits, targets), expected)
    assert token_logprobs(logits.bfloat16(), targets).dtype == torch.float32


def _hand_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross entropy of one unpadded sequence."""
    return F.cross_entropy(logits[:-1], input_ids[1:])


def test_sequence_nll_is_the_per_row_mean_cross_entropy():
    vocab, lengths = 13, [6, 4, 2]
    logits = _random_logits(3, 6, vocab, seed=8)
    input_ids = torch.randint(0, vocab, (3, 6), generator=torch.Generator().manual_seed(9))
    attention_mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    nll = sequence_nll(logits, input_ids, attention_mask)
    expected = torch.stack([_hand_nll(logits[i, :n], input_ids[i, :n]) for i, n in enumerate(lengths)])
    torch.testing.assert_close(nll, expected)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sequence_nll_ignores_padding(side):
    vocab, length, padded = 13, 4, 7
    logits = _random_logits(1, padded, vocab, seed=10)
    input_ids = torch.randint(0, vocab, (1, padded), generator=torch.Generator().manual_seed(11))
    pads = [0] * (padded - length)
    mask = torch.tensor([[1] * length + pads if side == "right" else pads + [1] * length])
    real = slice(0, length) if side == "right" else slice(padded - length, padded)
    nll = sequence_nll(logits, input_ids, mask)
    torch.testing.assert_close(nll, sequence_nll(logits[:, real], input_ids[:, real], torch.ones(1, length)))
    torch.testing.assert_close(nll[0], _hand_nll(logits[0, real], input_ids[0, real]))
    # Other logits and ids under the padding leave the value unchanged.
    pad_positions = ~mask.bool()
    other_logits = torch.where(pad_positions.unsqueeze(-1), _random_logits(1, padded, vocab, seed=12), logits)
    other_ids = torch.where(pad_positions, (input_ids + 1) % vocab, input_ids)
    torch.testing.assert_close(sequence_nll(other_logits, other_ids, mask), nll)


@pytest.mark.parametrize("row_mask", [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
def test_sequence_nll_needs_two_tokens_per_row(row_mask):
    logits, input_ids = _random_logits(2, 4, 5), torch.zeros(2, 4, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1], row_mask])
    with pytest.raises(ValueError, match="at least two tokens"):
        sequence_nll(logits, input_ids, mask)
