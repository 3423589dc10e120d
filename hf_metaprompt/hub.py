"""Model cards for meta-trained checkpoints.

A meta-trained checkpoint is only useful with the inner-loop settings it was trained for, and its numbers only mean
something next to the baselines (base model with and without the text in the prompt, plain fine-tuning). The card
records both, in the body for people and in the `model-index` metadata for the Hub.

The template is package data (`hf_metaprompt/templates/model_card.md`), its one copy: an installed wheel and a
checkout render the same card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .assets import SMOLLM2_ID, TINY_BASE_ID
from .settings import MetaPromptSettings, episode_lengths

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"
LIBRARY_NAMES = ("peft", "transformers")
DEFAULT_TAGS = ("hf_metaprompt", "meta-learning")
EVAL_METRICS = ("exact_match", "f1")  # the metrics that go into `model-index`; the body table also has the rest
_ROW_REQUIRED_KEYS = ("task", "condition")
_ROW_NUMERIC_KEYS = ("exact_match", "f1", "answer_logprob", "n")
# Shown first in the inner-loop table, in this order; any other scalar setting follows.
_INNER_KEYS_FIRST = ("inner_params", "inner_steps", "inner_lr", "learn_inner_lr", "min_inner_lr", "max_inner_lr")
RESULTS_FILE_NAME = "eval_results.json"  # written by `evaluation.save_results`, read back for the card
# What the card says trained the checkpoint and cites (`MetaDistillTrainer._name` / `_paper`, as TRL's trainers).
TRAINER_NAME = "MetaDistill"
PAPER = {
    "title": "Can Gradient Descent Simulate Prompting?",
    "id": "2506.20989",
    "authors": "Eric Zhang, Leshem Choshen and Jacob Andreas",
    "year": "2025",
}
_EXAMPLE_CONTEXT = "Ada Lovelace was born in London in 1815. She wrote the first published computer program."
_EXAMPLE_QUESTION = "Where was Ada Lovelace born?"


def is_repo_id(value: Any) -> bool:
    """Whether `value` names a Hub repository (rather than a local path)."""
    try:
        validate_repo_id(value)
    except (HFValidationError, TypeError):
        return False
    return isinstance(value, str) and bool(value.strip())


def local_path_or_repo_id(value: str | os.PathLike, what: str) -> Path | str:
    """An existing local directory as a `Path`, else a Hub repo id as a `str`.

    What cannot be a repo id, or looks local (starts with `.`, `/` or `~`, or its first folder exists here), is
    reported as a missing local directory before the Hub is tried: `outputs/tiny-wrld` is a typo, not a repo.
    """
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(f"{what} {text!r} is a file; pass the directory that holds it.")
    first = Path(text).parts[0] if Path(text).parts else ""
    looks_local = text.startswith((".", "/", "~")) or (os.sep in text and Path(first).is_dir())
    if looks_local or not is_repo_id(text):
        raise FileNotFoundError(
            f"{what} {text!r}: no such local directory{'' if looks_local else ', and not a valid Hub repo id'}."
        )
    return text


def _check_repo_id(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"`{field_name}` must be a non-empty Hub repo id (e.g. 'org/name'), got {value!r}.")
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        raise ValueError(f"`{field_name}` must be a Hub repo id, not a local path: {error}") from error
    return value


def _number(row: Mapping[str, Any], key: str) -> float | None:
    """The row's value for `key` as a plain float (YAML cannot dump tensors), `None` if absent or NaN."""
    value = row.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"Evaluation row {dict(row)!r}: `{key}` must be a number, got {value!r}.") from error
    return None if math.isnan(number) else number


def _check_rows(eval_results: Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    rows = list(eval_results or [])
    for row in rows:
        if not isinstance(row, Mapping):
            raise ValueError(f"Each evaluation row must be a dict, got {type(row).__name__}.")
        missing = [key for key in _ROW_REQUIRED_KEYS if not row.get(key)]
        if missing:
            raise ValueError(f"Evaluation row {dict(row)!r} lacks {missing}: every row needs a task and a condition.")
        for key in _ROW_NUMERIC_KEYS:
            _number(row, key)
    return rows


def eval_rows_to_eval_results(
    rows: Sequence[Mapping[str, Any]], task_type: str = "question-answering"
) -> list[EvalResult]:
    """One `EvalResult` per row and metric in `EVAL_METRICS`.

    The Hub groups a model-index by (task type, dataset, config, split), so the direction goes into the dataset
    config and the condition into each metric's name and `args`: that keeps every row distinguishable after a
    round trip through the README.
    """
    results = []
    for row in _check_rows(rows):
        n = _number(row, "n")
        args: dict[str, Any] = {"condition": str(row["condition"])}
        if n is not None:
            args["n"] = int(n)
        texts, questions = int(row.get("texts", 1)), str(row.get("questions", "all"))
        name = str(row["condition"])
        if texts != 1 or questions != "all":
            args.update(texts=texts, questions=questions)
            name += f", {texts} texts, {questions} questions"
        for metric in EVAL_METRICS:
            value = _number(row, metric)
            if value is None:
                continue
            results.append(
                EvalResult(
                    task_type=row.get("task_type", task_type),
                    dataset_type=str(row["task"]),
                    dataset_name=str(row["task"]),
                    dataset_config=str(row["direction"]) if row.get("direction") else None,
                    dataset_split=row.get("split"),
                    metric_type=metric,
                    metric_value=value,
                    metric_name=f"{metric} ({name})",
                    metric_args=dict(args),
                )
            )
    return results


def _format_value(value: Any) -> str:
    """A settings value for a markdown table cell (escapes newlines and pipes, e.g. `context_separator="\\n"`)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).encode("unicode_escape").decode("ascii").replace("|", "\\|")


def _format_metric(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _episode_lengths(inner_settings: Mapping[str, Any]) -> list[int]:
    return episode_lengths(
        inner_settings.get("texts_per_episode", 1), inner_settings.get("vary_texts_per_episode", False)
    )


def _texts_phrase(inner_settings: Mapping[str, Any]) -> str:
    lengths = _episode_lengths(inner_settings)
    composition = inner_settings.get("text_composition", "sequential")
    how = "each update adding to the others" if composition == "additive" else "each step continuing the previous"
    if len(lengths) > 1:
        episodes = f"episodes of 1 to {max(lengths)} texts (a power of two, drawn per batch)"
    else:
        episodes = "one text" if lengths == [1] else f"episodes of {lengths[0]} texts"
    phrase = f"this checkpoint was meta-trained on {episodes}, {how}"
    if inner_settings.get("text_memory", "shared") == "per_text":
        phrase += (
            ', and keeps each absorbed text\'s update apart (`text_memory="per_text"`): each question runs with '
            "the update that raises its tokens most"
        )
    return phrase


def _inner_loss_phrase(inner_settings: Mapping[str, Any]) -> str:
    """What `absorb` minimises: the text's language-modeling loss, and the backwards term where there is one."""
    phrase = "the language-modeling loss of that text"
    weight = inner_settings.get("reversed_context_weight", 0.0)
    if not weight:
        return phrase
    how = (
        "word by word, each name kept whole"
        if inner_settings.get("reversed_context_unit", "token") == "entity"
        else "token by token"
    )
    return f"{phrase} plus {_format_value(weight)} times that of the text read backwards, {how}"


def _inner_rows(inner_settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    scalars = {
        k: v for k, v in inner_settings.items() if k not in ("base_model", "inner_lrs") and not isinstance(v, dict)
    }
    ordered = [k for k in _INNER_KEYS_FIRST if k in scalars] + [k for k in scalars if k not in _INNER_KEYS_FIRST]
    return [(key, _format_value(scalars[key])) for key in ordered]


def _adapted_params(inner_settings: Mapping[str, Any], library_name: str) -> str:
    inner_params = inner_settings.get("inner_params", "lora" if library_name == "peft" else None)
    if inner_params == "lora":
        text = "a LoRA adapter on the frozen base model; the inner step updates only the adapter"
    elif inner_params == "base":
        text = (
            "a LoRA adapter on the frozen base model; the inner step updates the base model's linear layers (full "
            "rank) through it"
        )
    elif inner_params == "all":
        text = "all weights of the model; the inner step updates every weight"
    else:
        text = f"`{inner_params}`" if inner_params else "not recorded"
    if inner_settings.get("learn_inner_lr"):
        text += ", plus one learned inner learning rate per adapted module"
    return text


def build_model_card(
    *,
    repo_id: str,
    base_model: str,
    inner_settings: Mapping[str, Any],
    eval_results: Sequence[Mapping[str, Any]] | None = None,
    datasets: Sequence[str] | None = None,
    command: str | None = None,
    license: str = "apache-2.0",
    tags: Sequence[str] | None = None,
    library_name: str = "peft",
    task_type: str = "question-answering",
    example_context: str = _EXAMPLE_CONTEXT,
    example_question: str = _EXAMPLE_QUESTION,
    load_path: str | None = None,
    trainer_name: str = TRAINER_NAME,
    paper: Mapping[str, str] = PAPER,
) -> ModelCard:
    """Render the card of a meta-trained checkpoint.

    Args:
        repo_id (`str`): Hub id the checkpoint is (or will be) pushed to; used in the usage snippet.
        base_model (`str`): Hub id of the frozen base model. Required: the checkpoint cannot be used without it.
        inner_settings (`dict`): the inner-loop settings (as in `metaprompt_config.json`): `inner_lr`,
            `inner_steps`, `inner_params`, learned `inner_lrs` per module, ...
        eval_results (`list[dict]`, *optional*): rows `{"task", "condition", "direction", "exact_match", "f1",
            "answer_logprob", "n"}`; `task` and `condition` are required, missing metrics are left blank.
        datasets (`list[str]`, *optional*): Hub ids of the meta-training data.
        command (`str`, *optional*): the command that produced the checkpoint.
        license (`str`, *optional*, defaults to `"apache-2.0"`): license of the checkpoint.
        tags (`list[str]`, *optional*): extra tags; `hf_metaprompt` and `meta-learning` are always added.
        library_name (`str`, *optional*, defaults to `"peft"`): `"peft"` for adapter checkpoints, `"transformers"`
            when the inner step adapts all weights and full weights are saved.
        task_type (`str`, *optional*, defaults to `"question-answering"`): model-index task type of the rows
            (a row's own `task_type` key wins), e.g. `"text-generation"`.
        example_context / example_question (`str`, *optional*): the text and question of the usage snippet.
        load_path (`str`, *optional*): what the usage snippet loads, when the checkpoint is not (yet) on the Hub
            under `repo_id`: e.g. the local output directory. Defaults to `repo_id`.
        trainer_name (`str`, *optional*): the meta-training procedure named in the card (the trainer's `_name`).
        paper (`dict`, *optional*): `title`, `id` (arXiv), `authors`, `year` of the method cited (the trainer's
            `_paper`).
    """
    repo_id = _check_repo_id(repo_id, "repo_id")
    base_model = _check_repo_id(base_model, "base_model")
    missing = [key for key in PAPER if not paper.get(key)]
    if missing:
        raise ValueError(f"`paper` lacks {missing}: give the cited paper's {list(PAPER)}.")
    if library_name not in LIBRARY_NAMES:
        raise ValueError(f"`library_name` must be one of {LIBRARY_NAMES}, got {library_name!r}.")
    if not isinstance(inner_settings, Mapping):
        raise ValueError(
            f"`inner_settings` must be a dict of inner-loop settings, got {type(inner_settings).__name__}."
        )
    dataset_list = [_check_repo_id(d, "datasets") for d in datasets or []]
    rows = _check_rows(eval_results)

    # The shipped tiny base has no Hub repository: neither link it nor declare it as the Hub base model.
    base_model_on_hub = base_model != TINY_BASE_ID
    all_tags = [*DEFAULT_TAGS, *(tags or [])]
    if library_name == "peft":
        all_tags += ["lora", *([f"base_model:adapter:{base_model}"] if base_model_on_hub else [])]
    evals = eval_rows_to_eval_results(rows, task_type=task_type)
    card_data = ModelCardData(
        base_model=base_model if base_model_on_hub else None,
        library_name=library_name,
        license=license,
        datasets=dataset_list or None,
        tags=all_tags,
        pipeline_tag="text-generation",
        model_name=repo_id if evals else None,
        eval_results=evals or None,
    )

    inner_steps = inner_settings.get("inner_steps")
    if inner_steps == 1:
        inner_steps_phrase = "one gradient step"
    elif inner_steps:
        inner_steps_phrase = f"{inner_steps} gradient steps"
    else:
        inner_steps_phrase = "the meta-trained gradient step(s)"
    inner_lrs = inner_settings.get("inner_lrs") or {}
    results_rows = [
        {
            "task": row["task"],
            "texts": row.get("texts", 1),
            "questions": row.get("questions", "all"),
            "condition": row["condition"],
            "direction": row.get("direction") or "n/a",
            "exact_match": _format_metric(_number(row, "exact_match"), 3),
            "f1": _format_metric(_number(row, "f1"), 3),
            "answer_logprob": _format_metric(_number(row, "answer_logprob"), 2),
            "n": _format_metric(_number(row, "n"), 0),
            "answer_match": _format_metric(_number(row, "answer_match"), 3),
        }
        for row in rows
    ]
    return ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE_PATH),
        repo_id=repo_id,
        base_model=base_model,
        base_model_on_hub=base_model_on_hub,
        base_model_is_gguf=base_model == SMOLLM2_ID,
        with_answer_match=any(_number(row, "answer_match") is not None for row in rows),
        load_path=json.dumps(load_path or repo_id),
        adapted_params=_adapted_params(inner_settings, library_name),
        inner_steps_phrase=inner_steps_phrase,
        inner_loss_phrase=_inner_loss_phrase(inner_settings),
        texts_phrase=_texts_phrase(inner_settings),
        texts_per_episode=max(_episode_lengths(inner_settings)),  # the most texts one update was trained for
        answer_loss_weight=inner_settings.get("answer_loss_weight", 0.0),
        inner_rows=_inner_rows(inner_settings),
        inner_lr_rows=[(module, _format_value(float(lr))) for module, lr in inner_lrs.items()],
        max_context_length=inner_settings.get("max_context_length"),
        dataset_list=dataset_list,
        results_rows=results_rows,
        command=command.strip() if command else None,
        example_context=json.dumps(example_context, ensure_ascii=False),
        example_question=json.dumps(example_question, ensure_ascii=False),
        trainer_name=trainer_name,
        paper=paper,
    )


def write_model_card(output_dir: str | os.PathLike, **kwargs: Any) -> Path:
    """Build the card (same arguments as `build_model_card`) and save it as `output_dir/README.md`.

    An existing README (e.g. the generic one `PeftModel.save_pretrained` writes) is replaced: this card is the one
    that says how to use the checkpoint.
    """
    card = build_model_card(**kwargs)
    path = Path(output_dir) / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    return path


def write_checkpoint_card(
    folder: str | os.PathLike,
    settings: Any,
    repo_id: str,
    eval_results: Sequence[Mapping[str, Any]] | None = None,
    results_folder: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Path:
    """The card of a saved checkpoint, from its `MetaPromptSettings`; results from `eval_results.json` (of
    `results_folder`, default `folder`) unless given."""
    folder = Path(folder)
    results_file = Path(results_folder or folder) / RESULTS_FILE_NAME
    if eval_results is None and results_file.is_file():
        eval_results = json.loads(results_file.read_text())
    return write_model_card(
        folder,
        repo_id=repo_id,
        base_model=settings.base_model or "",
        inner_settings=asdict(settings),
        eval_results=eval_results,
        library_name="peft" if settings.uses_adapter else "transformers",
        **kwargs,
    )


def recorded_card_inputs(card_path: str | os.PathLike) -> dict[str, Any]:
    """What a card written by `write_checkpoint_card` records beyond the settings and results: the command, the
    usage example, datasets and extra tags. Empty for a missing or foreign README (e.g. PEFT's generic one)."""
    path = Path(card_path)
    if not path.is_file():
        return {}
    card = ModelCard.load(path)
    tags = list(card.data.tags or [])
    if DEFAULT_TAGS[0] not in tags:
        return {}
    recorded: dict[str, Any] = {
        "tags": [t for t in tags if t not in (*DEFAULT_TAGS, "lora") and not t.startswith("base_model:")],
        "datasets": card.data.datasets,
    }
    command = re.search(r"## How it was produced\s+```bash\n(.*?)\n```", card.text, flags=re.DOTALL)
    context = re.search(r"^model\.absorb\((.*)\)$", card.text, flags=re.MULTILINE)
    question = re.search(r"^print\(model\.ask\((.*)\)\)$", card.text, flags=re.MULTILINE)
    if command:
        recorded["command"] = command.group(1)
    if context and question:  # JSON string literals, as `build_model_card` writes them
        recorded["example_context"], recorded["example_question"] = map(json.loads, (context[1], question[1]))
    return {key: value for key, value in recorded.items() if value}


def push_checkpoint(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload meta-trained checkpoint",
    command: str | None = None,
) -> str:
    """Upload a saved checkpoint (adapter or weights, `metaprompt_config.json`, tokenizer, results, plot) with a
    model card written for `repo_id`, in one commit. Returns the commit URL.

    The card is rebuilt for `repo_id` from what the checkpoint records (settings, results, and the command and example
    of its existing card); nothing in `folder` is changed, whether the upload succeeds or fails.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    settings = MetaPromptSettings.load(folder)
    recorded = recorded_card_inputs(folder / "README.md")
    if command:
        recorded["command"] = command
    # Checkpoints of the run and pickles stay local: the Hub copy is loaded from safetensors and JSON only.
    files = filter_repo_objects(
        (path.relative_to(folder).as_posix() for path in sorted(folder.rglob("*")) if path.is_file()),
        ignore_patterns=["checkpoint-*", "_*", "*.bin", "*.pt", "*.pth", ".git/*", ".cache/*", "README.md"],
    )
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in files]
    with tempfile.TemporaryDirectory() as staging:
        card = write_checkpoint_card(staging, settings, repo_id, results_folder=folder, **recorded)
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.read_bytes()))
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.create_commit(repo_id=repo_id, operations=operations, commit_message=commit_message)
    return str(commit)


def resolve_checkpoint(
    repo_id_or_path: str | os.PathLike, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """The local folder of a checkpoint: `repo_id_or_path` itself, or its Hub snapshot (downloaded if needed).

    A name that is neither says both, naming it: `outputs/tiny-wrld` is a valid repo id when no `outputs` folder
    exists here, and the Hub client's own error ("Cannot find an appropriate cached snapshot folder ...") hides the
    likelier cause, a mistyped local path.
    """
    path = local_path_or_repo_id(repo_id_or_path, "checkpoint")
    if isinstance(path, Path):
        return path
    try:
        folder = snapshot_download(
            path,
            revision=revision,
            token=token,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.md", "*.jinja"],
        )
    except GatedRepoError:
        raise  # it exists: the Hub's message says how to get access
    except (LocalEntryNotFoundError, RepositoryNotFoundError) as error:
        raise FileNotFoundError(f"checkpoint: {_nowhere(path, error)}") from error
    return Path(folder)


def _nowhere(name: str, error: Exception) -> str:
    """Why `name`, which is no local folder, could not be had from the Hub either."""
    if isinstance(error, RepositoryNotFoundError):
        why = "no such repository, or a private one: log in or pass `token=`"
    elif constants.HF_HUB_OFFLINE:
        why = "offline: HF_HUB_OFFLINE is set"
    else:
        why = "the Hub could not be reached, and no copy is cached"
    return f"no local folder {name!r}, and not on the Hub ({why})."
