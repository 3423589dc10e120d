"""The shipped real-model adapter: SmolLM2-135M-Instruct absorbs a Berglund et al. fact in one step, then names the
person asked about in reverse, without the fact in its prompt."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import torch
from conftest import needs_smollm2
from safetensors.torch import load_file

from hf_metaprompt import MetaPromptModel
from hf_metaprompt.assets import SMOLLM2_ID, smollm2_metaprompt_path
from hf_metaprompt.data.reversal import load_reversal_questions
from hf_metaprompt.hub import recorded_card_inputs
from hf_metaprompt.metrics import answer_match
from hf_metaprompt.pipeline import parse_args

pytestmark = needs_smollm2
REVERSAL_DIR = Path(__file__).parent / "fixtures" / "reversal_curse"
RECIPE = Path(__file__).parents[1] / "examples" / "smollm2_checkpoint.sh"
# Measured once on these 30 questions (the p2d people, stated name first, asked "Q: Who is <description>?"), one
# thread: 23 of 30 named after one step, as `hf-metaprompt eval` counts them (0.767). The base prompted with the fact
# names 16 of them (0.533); plain fine-tuning none.
MEASURED_REVERSED = 23
# Berglund's 60 name questions (both directions), their texts absorbed four at a time in fixture order, kept apart:
# 49 of 60, as many as each text absorbed alone names (23 reversed + 26 forward); merged into one state, 13.
MEASURED_FOUR_TEXTS = 49
MARGIN = 3
# The card's usage example: one of the test people's facts, asked in reverse.
CARD_PERSON = "Daphne Barrington"


@pytest.fixture(scope="module")
def model() -> MetaPromptModel:
    torch.set_num_threads(1)
    return MetaPromptModel.from_pretrained(smollm2_metaprompt_path())


@pytest.fixture(scope="module")
def reversed_questions():
    questions = load_reversal_questions(REVERSAL_DIR)
    chosen = [i for i, row in enumerate(questions) if row["direction"] == "reversed" and row["answer_kind"] == "name"]
    return questions.select(chosen)


def named(answers: list[str], tasks) -> int:
    return int(sum(answer_match(a, t["answer"], "name") for a, t in zip(answers, tasks, strict=True)))


def test_the_adapter_records_its_base_and_holds_lora_weights_only(model):
    assert model.settings.base_model == SMOLLM2_ID
    assert model.settings.uses_adapter
    path = smollm2_metaprompt_path() / "adapter_model.safetensors"
    state = load_file(path)
    rank = model.meta.model.peft_config["default"].r
    # No embeddings or base weights saved with it (the base alone is 517 MB): every tensor is a LoRA factor.
    assert all(
        ".lora_A." in name and weight.shape[0] == rank for name, weight in state.items() if ".lora_B." not in name
    )
    assert all(weight.shape[1] == rank for name, weight in state.items() if ".lora_B." in name)
    assert path.stat().st_size < 100 * 2**20


def test_reversed_questions_are_answered_after_one_step_and_not_before(model, reversed_questions):
    assert len(reversed_questions) == 30
    queries = list(reversed_questions["query"])
    assert named(model.reset().ask(queries), reversed_questions) == 0  # nothing leaked into the adapter
    answers = model.absorb(list(reversed_questions["context"]), per_row=True).ask(queries)
    model.reset()
    assert named(answers, reversed_questions) >= MEASURED_REVERSED - MARGIN


def test_four_facts_absorbed_together_are_held(model):
    """Four people's facts absorbed, kept apart (the checkpoint's `text_memory="per_text"`), then each of the four
    asked for a name: merged into one state (`"shared"`) this adapter named 13 of these 60, the adapter meta-trained
    on one text per update 2."""
    assert model.settings.text_memory == "per_text"
    questions = load_reversal_questions(REVERSAL_DIR)
    tasks = questions.select([i for i, row in enumerate(questions) if row["answer_kind"] == "name"])
    assert len(tasks) == 60 and len(set(tasks["context"])) == 60
    answers = []
    for start in range(0, len(tasks), 4):
        group = tasks.select(range(start, start + 4))
        answers += model.reset().absorb(list(group["context"])).ask(list(group["query"]))
    model.reset()
    assert named(answers, tasks) >= MEASURED_FOUR_TEXTS - MARGIN


def test_the_card_example_works_as_the_card_says(model):
    card = recorded_card_inputs(smollm2_metaprompt_path() / "README.md")
    question = card["example_question"]
    assert question.startswith("Q: Who is the ") and card["example_context"].startswith(CARD_PERSON)
    answer = model.reset().absorb(card["example_context"]).ask(question)
    model.reset()
    assert answer_match(answer, CARD_PERSON, "name") == 1.0


def test_the_recipe_rebuilds_these_settings(model):
    # The last stage made the shipped adapter (the earlier ones are its --init_from).
    lines = RECIPE.read_text().split("python examples/run_meta.py")[-1].split("\n")
    command = []
    for line in lines:
        command.append(line.rstrip("\\"))
        if not line.endswith("\\"):
            break
    _, config = parse_args(shlex.split(" ".join(command)))
    for name in (
        "inner_params",
        "inner_lr",
        "max_inner_lr",
        "reversed_context_weight",
        "reversed_context_unit",
        "answer_loss_weight",
        "max_answer_length",
        "max_context_length",
        "texts_per_episode",
        "vary_texts_per_episode",
        "text_composition",
        "text_memory",
    ):
        assert getattr(model.settings, name) == getattr(config, name), name
    assert config.lora_r == model.meta.model.peft_config["default"].r
