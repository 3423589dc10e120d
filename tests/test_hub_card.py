"""The model card of a meta-trained checkpoint: renders, parses back, validates, and its code runs through `ast`."""

import ast
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard, ModelCardData

from hf_metaprompt.hub import MODEL_CARD_TEMPLATE_PATH, build_model_card, write_model_card
from hf_metaprompt.settings import MetaPromptSettings

pytest_plugins = ["hub_server"]  # the `hub_server` fixture, also when tests/conftest.py does not load it

REPO_ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "test-user/tiny-meta"
BASE_MODEL = "test-user/tiny-llama"
ROWS = [
    {"task": "tiny_world", "condition": "base, no context", "direction": "forward", "exact_match": 0.05, "f1": 0.12,
     "answer_logprob": -5.1, "n": 200},
    {"task": "tiny_world", "condition": "base, prompted", "direction": "forward", "exact_match": 0.9, "f1": 0.93,
     "answer_logprob": -0.3, "n": 200},
    {"task": "tiny_world", "condition": "meta-trained + inner step", "direction": "forward", "exact_match": 0.7,
     "f1": 0.75, "answer_logprob": -0.9, "n": 200},
    {"task": "tiny_world", "condition": "meta-trained + inner step", "direction": "reverse", "exact_match": 0.35,
     "f1": float("nan"), "answer_logprob": -2.0, "n": 200},
    {"task": "reversal_curse", "condition": "meta-trained + inner step", "direction": "reverse",
     "exact_match": np.float32(0.25), "f1": 0.5, "answer_logprob": None, "n": 30},
]  # fmt: skip
INNER_SETTINGS = {
    "inner_params": "lora",
    "inner_lr": 0.01,
    "learn_inner_lr": True,
    "inner_steps": 1,
    "first_order": False,
    "max_context_length": 512,
    "inner_lrs": {"model.layers.0.self_attn.q_proj": 0.0123},
}


def _card_kwargs(**overrides):
    kwargs = {
        "repo_id": REPO_ID,
        "base_model": BASE_MODEL,
        "inner_settings": INNER_SETTINGS,
        "eval_results": ROWS,
        "datasets": ["hf-metaprompt/tiny_world"],
        "command": "hf-metaprompt train --task tiny_world --output_dir out",
    }
    return kwargs | overrides


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_the_card_template_is_the_package_data_installs_ship():
    """One template: the package's, declared as package data so an installed wheel renders the same card."""
    import tomllib

    package = REPO_ROOT / "hf_metaprompt"
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(MODEL_CARD_TEMPLATE_PATH.relative_to(package).match(p) for p in patterns["hf_metaprompt"])
    # The project's own folders (a virtualenv inside the checkout holds huggingface_hub's template, not ours).
    markdown = [*REPO_ROOT.glob("*.md")]
    for folder in ("hf_metaprompt", "model_cards", "examples", "benchmarks", "tests"):
        markdown += (REPO_ROOT / folder).rglob("*.md")
    copies = [p.resolve() for p in markdown if "{{ card_data }}" in p.read_text(errors="ignore")]
    assert copies == [MODEL_CARD_TEMPLATE_PATH.resolve()]


def test_the_card_names_the_trainer_and_cites_its_paper(tmp_path, llama_tokenizer):
    """`_name` / `_paper` of the trainer (class) feed the card, as in TRL; the defaults cite the method's paper."""
    from test_trainer import config, peaky_model, toy_dataset

    from hf_metaprompt import MetaDistillTrainer

    default = build_model_card(**_card_kwargs()).text
    assert "`hf_metaprompt` (MetaDistill)" in default
    citation = "*Can Gradient Descent Simulate Prompting?* ([arXiv:2506.20989](https://arxiv.org/abs/2506.20989))"
    assert citation in default

    class OtherTrainer(MetaDistillTrainer):
        _name = "OtherDistill"
        _paper = {"title": "Another Method", "id": "2501.00001", "authors": "A. Author", "year": "2031"}

    dataset = toy_dataset(8, seed=0)
    trainer = OtherTrainer(
        model=peaky_model(), args=config(tmp_path), train_dataset=dataset, processing_class=llama_tokenizer
    )
    trainer.meta_model.record_base_model(BASE_MODEL)
    trainer.create_model_card()
    text = (tmp_path / "out" / "README.md").read_text()
    assert "`hf_metaprompt` (OtherDistill), following A. Author (2031)" in text
    assert "*Another Method* ([arXiv:2501.00001](https://arxiv.org/abs/2501.00001))" in text
    with pytest.raises(ValueError, match="`paper` lacks \\['id'\\]"):
        build_model_card(**_card_kwargs(paper={"title": "T", "authors": "A", "year": "1"}))


def test_saved_card_loads_and_metadata_round_trips(tmp_path):
    path = write_model_card(tmp_path, **_card_kwargs())
    assert path == tmp_path / "README.md"
    card = ModelCard.load(path)

    data = card.data
    assert data.base_model == BASE_MODEL
    assert data.library_name == "peft"
    assert data.license == "apache-2.0"
    assert data.datasets == ["hf-metaprompt/tiny_world"]
    assert {"hf_metaprompt", "meta-learning"} <= set(data.tags)
    assert ModelCardData(**data.to_dict()).to_dict() == data.to_dict()

    # One EvalResult per row and metric; NaN and None metrics are left out.
    found = {
        (r.dataset_name, r.dataset_config, r.metric_args["condition"], r.metric_type): r.metric_value
        for r in data.eval_results
    }
    expected = {
        (row["task"], row["direction"], row["condition"], metric): float(row[metric])
        for row in ROWS
        for metric in ("exact_match", "f1")
        if row[metric] is not None and not math.isnan(row[metric])
    }
    assert found == pytest.approx(expected)
    assert len(data.eval_results) == len(expected)
    assert {r.task_type for r in data.eval_results} == {"question-answering"}
    assert all(r.metric_args["n"] == 200 for r in data.eval_results if r.dataset_name == "tiny_world")

    body = card.text
    assert "Can Gradient Descent Simulate Prompting?" in body
    assert "Zhang" in body and "Choshen" in body and "Andreas" in body
    assert "| tiny_world | 1 | all | meta-trained + inner step | reverse | 0.350 | n/a | -2.00 | 200 |" in body
    assert "| `inner_lr` | 0.01 |" in body
    assert "`model.layers.0.self_attn.q_proj` | 0.0123" in body
    assert _code_blocks(body, "bash") == ["hf-metaprompt train --task tiny_world --output_dir out\n"]


def test_usage_code_is_valid_python():
    card = build_model_card(
        **_card_kwargs(example_context='He said "hi".\nThen left \\ quietly.', example_question="Who's there?")
    )
    (code,) = _code_blocks(card.text, "python")
    tree = ast.parse(code)
    calls = {
        node.func.attr: node for node in ast.walk(tree) if isinstance(node, ast.Call) and hasattr(node.func, "attr")
    }
    assert ast.literal_eval(calls["from_pretrained"].args[0]) == REPO_ID
    assert ast.literal_eval(calls["absorb"].args[0]) == 'He said "hi".\nThen left \\ quietly.'
    assert ast.literal_eval(calls["ask"].args[0]) == "Who's there?"
    assert code.startswith("from hf_metaprompt import MetaPromptModel\n")


def test_card_from_metaprompt_settings():
    """The inner-loop table takes `metaprompt_config.json` as saved; odd values must not break the markdown table."""
    settings = asdict(MetaPromptSettings(base_model=BASE_MODEL, context_separator="\n|", inner_lrs={"q_proj": 0.02}))
    card = build_model_card(**_card_kwargs(inner_settings=settings))
    lines = card.text[card.text.index("| setting | value |") :].split("\n\n")[0].splitlines()
    scalars = [k for k, v in settings.items() if k != "base_model" and not isinstance(v, dict)]
    assert len(lines) == 2 + len(scalars)
    assert all(line.startswith("| ") and line.endswith(" |") and line.count(" | ") == 1 for line in lines[2:])
    assert "| `context_separator` | \\n\\| |" in lines
    assert "| `q_proj` | 0.02 |" in card.text


def test_minimal_card_renders_without_results():
    card = build_model_card(repo_id=REPO_ID, base_model=BASE_MODEL, inner_settings={}, eval_results=None,
                            datasets=None, command=None, library_name="transformers")  # fmt: skip
    assert card.data.eval_results is None
    assert "model-index" not in card.data.to_dict()
    assert card.data.library_name == "transformers"
    assert "No evaluation results were recorded" in card.text
    ast.parse(_code_blocks(card.text, "python")[0])


@pytest.mark.parametrize("base_model", ["", "   ", None, "/tmp/local/checkpoint", "./out"])
def test_base_model_is_required_and_a_hub_id(base_model):
    with pytest.raises(ValueError, match="base_model"):
        build_model_card(**_card_kwargs(base_model=base_model))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"eval_results": [{"task": "tiny_world", "exact_match": 0.5}]}, "condition"),
        ({"eval_results": [{"task": "t", "condition": "c", "f1": "high"}]}, "f1"),
        ({"library_name": "timm"}, "library_name"),
        ({"repo_id": ""}, "repo_id"),
        ({"datasets": ["not a dataset id"]}, "datasets"),
    ],
)
def test_invalid_inputs_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model_card(**_card_kwargs(**overrides))


def test_card_validates_and_pushes_to_local_hub(hub_server):
    """`RepoCard.validate` needs the Hub's validate-yaml endpoint; the local Hub checks it with ModelCardData."""
    card = build_model_card(**_card_kwargs())
    card.validate()
    broken = ModelCard(str(card).replace(f"base_model: {BASE_MODEL}", "base_model: not/a/valid/id", 1))
    with pytest.raises(ValueError, match="base_model"):
        broken.validate()

    HfApi().create_repo(REPO_ID)
    card.push_to_hub(REPO_ID)
    info = HfApi().model_info(REPO_ID)
    assert info.card_data.base_model == BASE_MODEL
    assert info.model_index[0]["name"] == REPO_ID
    assert ModelCard.load(REPO_ID).data.to_dict() == card.data.to_dict()


def test_many_texts_rows_stay_distinct_in_the_model_index():
    curve = [
        {"task": "tiny_world", "condition": "meta_1step", "direction": "forward", "texts": texts,
         "questions": questions, "exact_match": value, "n": 16}
        for texts, questions, value in [(1, "all", 0.8), (16, "all", 0.6), (16, "first_text", 0.5)]
    ]  # fmt: skip
    settings = {**INNER_SETTINGS, "texts_per_episode": 8, "text_composition": "additive"}
    card = build_model_card(**_card_kwargs(eval_results=curve, inner_settings=settings))
    names = [r.metric_name for r in card.data.eval_results]
    assert len(names) == len(set(names)) == 3
    assert "exact_match (meta_1step, 16 texts, first_text questions)" in names
    assert "| tiny_world | 16 | first_text | meta_1step | forward | 0.500 |" in card.text
    assert "episodes of 8 texts, each update adding to the others" in card.text
    assert "absorb(...) adds texts: meta-trained for up to 8" in card.text
    varied = build_model_card(
        **_card_kwargs(eval_results=curve, inner_settings={**settings, "vary_texts_per_episode": True})
    )
    assert "episodes of 1 to 8 texts (a power of two, drawn per batch), each update adding" in varied.text
    six = build_model_card(  # 6 varied draws 1 or 2 texts (the powers of two dividing 6): the card says so
        **_card_kwargs(
            eval_results=curve, inner_settings={**settings, "texts_per_episode": 6, "vary_texts_per_episode": True}
        )
    )
    assert "episodes of 1 to 2 texts (a power of two, drawn per batch)" in six.text
    assert "meta-trained for up to 2)" in six.text
    one_text = build_model_card(**_card_kwargs(eval_results=curve))
    assert "forget the absorbed text before absorbing another one" in one_text.text
    kept_apart = build_model_card(
        **_card_kwargs(eval_results=curve, inner_settings={**settings, "text_memory": "per_text"})
    )
    assert "each update adding to the others, and keeps each absorbed text's update apart" in kept_apart.text
    assert "| `text_memory` | per_text |" in kept_apart.text and "apart" not in card.text


@pytest.mark.parametrize(
    ("weight", "says", "never"),
    [
        (0.0, "no gold answers are needed", "cross-entropy"),
        (0.5, "with cross-entropy on the answer (`answer_loss_weight=0.5`)", "no gold answers are needed"),
        (1.0, "trained with cross-entropy on the answer (`answer_loss_weight=1`)", "distilled towards"),
    ],
)
def test_the_card_says_where_the_targets_come_from(weight, says, never):
    card = build_model_card(**_card_kwargs(inner_settings={**INNER_SETTINGS, "answer_loss_weight": weight}))
    text = " ".join(card.text.split())
    assert says in text
    assert never not in text


@pytest.mark.parametrize(
    ("reversal", "says"),
    [
        ({}, "one gradient step on the language-modeling loss of that text, and"),
        (
            {"reversed_context_weight": 0.5},
            "of that text plus 0.5 times that of the text read backwards, token by token, and",
        ),
        (
            {"reversed_context_weight": 1.0, "reversed_context_unit": "entity"},
            "of that text plus 1 times that of the text read backwards, word by word, each name kept whole, and",
        ),
    ],
)
def test_the_card_says_what_absorb_minimises(reversal, says):
    card = build_model_card(**_card_kwargs(inner_settings={**INNER_SETTINGS, **reversal}))
    assert says in " ".join(card.text.split())


def test_shipped_tiny_base_is_not_linked_and_local_cards_load_their_folder(tmp_path, caplog):
    """A card links only what exists on the Hub, and its usage code loads what it describes."""
    from hf_metaprompt.assets import TINY_BASE_ID

    (tmp_path / "README.md").write_text("generic card\n")
    with caplog.at_level("INFO", logger="hf_metaprompt"):
        path = write_model_card(
            tmp_path, **_card_kwargs(base_model=TINY_BASE_ID, repo_id="tiny-world", load_path="outputs/tiny-world")
        )
    assert not caplog.records  # nothing a user can act on
    card = ModelCard.load(path)
    assert "huggingface.co/" + TINY_BASE_ID not in card.text
    assert card.data.base_model is None and not any(TINY_BASE_ID in tag for tag in card.data.tags)
    (code,) = _code_blocks(card.text, "python")
    call = next(
        n
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_pretrained"
    )
    assert ast.literal_eval(call.args[0]) == "outputs/tiny-world"
