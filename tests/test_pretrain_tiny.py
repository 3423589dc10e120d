"""`examples/pretrain_tiny.py`: the data it trains on and the command its card records."""

import itertools
import shlex

import pytest
import torch
from conftest import load_script
from transformers import AutoTokenizer

from hf_metaprompt.assets import tiny_base_path
from hf_metaprompt.data.tiny_world import iter_pretraining_documents


@pytest.fixture(scope="module")
def pretrain_tiny():
    return load_script("examples/pretrain_tiny.py")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_base_path())


def test_card_command_reads_back_to_the_same_arguments(pretrain_tiny, tmp_path):
    args = pretrain_tiny.parse_args(
        ["--init_from", str(tmp_path / "base dir"), "--eval_facts", "8", "16", "--fresh_descriptions", "--seed", "3"]
    )
    words = shlex.split(pretrain_tiny.command_line(args))
    assert words[:2] == ["python", "examples/pretrain_tiny.py"]
    assert pretrain_tiny.parse_args(words[2:]) == args


def test_documents_are_encoded_as_the_collator_encodes_segments(pretrain_tiny, tokenizer):
    def tok(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    documents = list(itertools.islice(iter_pretraining_documents(0, 3, questions_per_context=2), 4))
    documents[0] = type(documents[0])(context=documents[0].context, questions=[])
    encoded = pretrain_tiny.encode_documents(tokenizer, documents, answer_loss_weight=8.0)

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert encoded[0] == ([bos, *tok(documents[0].context), eos], [1.0] * (len(tok(documents[0].context)) + 2))
    for document, (ids, weights) in zip(documents[1:], encoded[1:], strict=True):
        (query1, answer1), (query2, answer2) = document.questions
        expected = [bos, *tok(document.context + "\n"), *tok(query1), *tok(answer1 + "\n"), *tok(query2)]
        assert ids == [*expected, *tok(answer2), eos]
        answers = len(tok(answer1 + "\n")), len(tok(answer2)) + 1
        assert weights[-answers[1] :] == [8.0] * answers[1]
        start = 1 + len(tok(document.context + "\n")) + len(tok(query1))
        assert weights[start : start + answers[0]] == [8.0] * answers[0]
        assert sum(weight == 8.0 for weight in weights) == sum(answers)


def test_batches_are_the_same_for_any_number_of_workers(pretrain_tiny, tokenizer):
    def batches(num_workers):
        args = pretrain_tiny.parse_args(
            ["--batch_size", "4", "--num_workers", str(num_workers), "--fresh_descriptions"]
        )
        return list(itertools.islice(pretrain_tiny.iter_batches(tokenizer, args), 3 * pretrain_tiny.POOL_BATCHES))

    in_process, with_workers = batches(0), batches(2)
    assert len(in_process) == len(with_workers) == 24
    for (ids, weights), (other_ids, other_weights) in zip(in_process, with_workers, strict=True):
        assert torch.equal(ids, other_ids) and torch.equal(weights, other_weights)
        # Right padding carries no loss, real tokens all do.
        assert torch.equal(weights > 0, ids != tokenizer.pad_token_id)


def test_a_new_data_stream_draws_new_documents(pretrain_tiny, tokenizer):
    """Which people a stream may name is checked in test_tiny_world (every stream: train people only)."""

    def first_batch(*flags):
        args = pretrain_tiny.parse_args(["--batch_size", "4", "--fresh_descriptions", *flags])
        return next(pretrain_tiny.iter_batches(tokenizer, args))[0]

    # Stream 0 is the stream every recorded command drew (the shipped base's card replays with it).
    first_stream = first_batch()
    assert torch.equal(first_stream, first_batch("--data_stream", "0"))
    assert not torch.equal(first_stream, first_batch("--data_stream", "1"))
    with pytest.raises(SystemExit):
        pretrain_tiny.parse_args(["--data_stream", "-1"])
