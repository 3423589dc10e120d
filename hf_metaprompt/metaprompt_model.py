"""`MetaPromptModel`: load a meta-trained checkpoint, absorb a text with its inner step, ask without the text."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from .assets import base_location
from .compat import quiet_peft_wrapping
from .fast_weights import FastWeights, use_fast_weights
from .hub import resolve_checkpoint
from .inner import inner_update
from .meta_step import MetaDistillModel
from .routing import route
from .settings import METAPROMPT_CONFIG_NAME, MetaPromptSettings
from .tokens import (
    ANSWER_STOP,
    answer_stopping,
    context_rows,
    decode_answers,
    encode,
    pad_rows,
    pad_token_id,
    reversal_word_classes,
    special_prefix_ids,
    split_into_windows,
)
from .validation import position_limit

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
TEXTS_PER_PASS = 8  # per_text memory: texts per batched inner step


class MetaPromptModel(nn.Module):
    """A meta-trained model that learns a text from one gradient step.

    ```python
    model = MetaPromptModel.from_pretrained("user/llama-metaprompt")
    model.absorb("Alice Moreau is a baker from Lisbon.")
    model.ask("Q: Who is the baker from Lisbon?\\nA:")
    ```

    `absorb` keeps the updated weights as *fast weights* beside the meta-trained ones, which are never modified:
    `reset()` returns to the meta-trained state exactly. With `text_memory="per_text"` each text keeps its own
    update (`text_states`) and every query runs with the one that raises its tokens most (`hf_metaprompt.routing`).
    """

    def __init__(self, meta: MetaDistillModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.meta = meta
        self.tokenizer = tokenizer
        self.fast_weights: FastWeights | None = None
        self.text_states: FastWeights | None = None  # per_text memory: one state per text, chosen per query
        self.texts_absorbed = 0  # since the last reset(); per row with `per_row=True`
        self._prefix = special_prefix_ids(tokenizer)
        self.meta.requires_grad_(False)
        self.meta.eval()

    # ----- loading
    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        *,
        base_model: str | os.PathLike | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
        load_base: bool = False,
        text_memory: str | None = None,
    ) -> MetaPromptModel:
        """Load base model + meta-trained adapter + `metaprompt_config.json` + tokenizer (safetensors only).

        `repo_id_or_path` is a Hub repo id or a directory written by `MetaDistillTrainer`/`run_meta.py`/
        `save_pretrained`. `base_model` overrides the base recorded in the checkpoint. An `inner_params="all"`
        checkpoint replaces the base's weights, so absorbing and asking need no base; `load_base=True` also loads
        it, for what compares against it (the evaluation's prompted / plain fine-tuning conditions). An adapter
        checkpoint always has its base (the adapter switched off). `text_memory` overrides how the checkpoint holds
        several texts (`"shared"` or `"per_text"`; default: as recorded).
        """
        directory = resolve_checkpoint(repo_id_or_path, revision=revision, token=token)
        settings = MetaPromptSettings.load(directory)
        if text_memory is not None:
            settings = dataclasses.replace(settings, text_memory=text_memory)  # checked like a loaded value
        _check_weight_files(directory, settings)
        load_kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
        if dtype is not None:
            load_kwargs["dtype"] = dtype
        if settings.uses_adapter:
            from peft import PeftModel

            base_id = base_model or settings.base_model or _adapter_base(directory)
            if not base_id:
                raise ValueError(f"{directory} does not say which base model it adapts; pass `base_model=`.")
            base = AutoModelForCausalLM.from_pretrained(base_location(base_id), **load_kwargs)
            with _naming_corrupt_file(directory / ADAPTER_WEIGHTS_NAME), quiet_peft_wrapping():
                model = PeftModel.from_pretrained(base, str(directory), is_trainable=False)
            teacher = None
        else:
            with _naming_corrupt_file(directory / "model.safetensors"):
                model = AutoModelForCausalLM.from_pretrained(str(directory), **load_kwargs)
            teacher = model  # no base: what needs one refuses it (`MetaDistillModel.teacher_mode`)
            if load_base:
                base_id = base_model or settings.base_model
                if not base_id:
                    raise ValueError(
                        f"{directory} does not say which base model it was meta-trained from; pass `base_model=`."
                    )
                teacher = AutoModelForCausalLM.from_pretrained(base_location(base_id), **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        meta = MetaDistillModel(
            model,
            settings,
            teacher=teacher,
            word_classes=reversal_word_classes(tokenizer, settings.reversed_context_unit),
        )
        _check_learned_lrs(meta, settings, directory)
        meta.check_finite(f"Refusing to load {directory}")
        loaded = cls(meta, tokenizer)
        return loaded.to(device) if device is not None else loaded

    # ----- absorbing
    @property
    def settings(self) -> MetaPromptSettings:
        return self.meta.settings

    @property
    def device(self) -> torch.device:
        return self.meta.log_inner_lrs.device

    def absorb(
        self, texts: str | Sequence[str], *, per_row: bool = False, window_tokens: int | None = None
    ) -> MetaPromptModel:
        """Learn `texts` with the meta-trained inner step(s).

        - one text, or several with `per_row=False`: kept for every later query, with what was absorbed before
          (until `reset()`), as the checkpoint's `text_memory` says: `"shared"`, one state, the texts combined as the
          checkpoint was meta-trained to (`settings.text_composition`: each step continuing from the previous one,
          or updates from the meta-trained weights adding up); `"per_text"`, each text's own update, a query then
          answered with the update that raises its tokens most;
        - several texts with `per_row=True`: one independent state per text, computed in one batched pass; row `i`
          of every later batch then uses text `i` (one update per user or session).

        A text longer than `window_tokens` (default and most: the checkpoint's `max_context_length`) is cut at
        sentences into windows, absorbed as several texts; a window about as long as the texts the checkpoint was
        meta-trained on holds them best.
        """
        texts = _check_texts(texts)
        count = len(texts)
        # Every text is checked and encoded before any state changes: a bad text leaves nothing half-absorbed.
        limit = self._window_tokens(window_tokens)
        if not per_row:
            texts = [window for text in texts for window in self._windows(text, limit)]
        elif any(len(self._windows(text, limit)) > 1 for text in texts):
            raise ValueError(
                f"A text is longer than the context window ({limit} tokens): per_row=True takes one window per row; "
                "absorb a long document with per_row=False (window after window)."
            )
        if not per_row and self.fast_weights is not None and self.fast_weights.num_tasks != 1:
            raise ValueError("Per-row states are absorbed; reset() before absorbing shared texts.")
        if per_row:
            self.fast_weights, self.text_states = self._inner_step(*self._encode_contexts(texts), start=None), None
        elif self.settings.text_memory == "per_text":
            # A few texts per inner pass: its backward holds every adapted layer's activations per text.
            # What was absorbed before (a one-row state of `per_row=True` included) stays one of the texts.
            parts = [state for state in (self.fast_weights, self.text_states) if state is not None]
            for start in range(0, len(texts), TEXTS_PER_PASS):
                parts.append(self._inner_step(*self._encode_contexts(texts[start : start + TEXTS_PER_PASS]), None))
            self.fast_weights, self.text_states = None, FastWeights.cat(parts)
            logger.info("%d text state(s) kept apart (text_memory='per_text').", self.text_states.num_tasks)
        elif self.settings.text_composition == "additive":
            ids, mask = self._encode_contexts(texts)
            self.fast_weights = self._add_update(self._inner_step(ids, mask, start=None, rows_per_task=len(texts)))
        else:
            encoded = [self._encode_contexts([text]) for text in texts]
            state = self.fast_weights
            for ids, mask in encoded:
                state = self._inner_step(ids, mask, start=state)
            self.fast_weights = state
        self.texts_absorbed = count if per_row else self.texts_absorbed + count
        return self

    def _add_update(self, updated: FastWeights) -> FastWeights:
        """What was absorbed before plus the update of the new texts (both taken from the meta-trained weights)."""
        if self.fast_weights is None:
            return updated
        initial = self.meta.adapted.initial(1).tensors
        return FastWeights(
            updated.modules,
            [old + new - w for old, new, w in zip(self.fast_weights.tensors, updated.tensors, initial, strict=True)],
        )

    def reset(self) -> MetaPromptModel:
        """Forget everything absorbed: back to the meta-trained weights, bit for bit."""
        self.fast_weights = self.text_states = None
        self.texts_absorbed = 0
        return self

    def __repr__(self) -> str:
        """One line (the wrapped model's repr runs to a hundred): what a REPL user needs after `absorb(...)`."""
        s = self.settings
        configs = getattr(self.meta.model, "peft_config", {})
        if s.inner_params == "all":
            adapted = "every linear layer"
        else:
            ranks = sorted({config.r for config in configs.values()})
            adapted = f"LoRA r={'/'.join(map(str, ranks))}" + (
                " (updates the base's linears)" if s.inner_params == "base" else ""
            )
        absorbed = (
            f"{self.texts_absorbed} per row"
            if self.fast_weights is not None and self.fast_weights.num_tasks > 1
            else str(self.texts_absorbed)
        )
        return (
            f"MetaPromptModel(base={s.base_model!r}, adapted={adapted}, inner_steps={s.inner_steps}, "
            f"text_composition={s.text_composition!r}, text_memory={s.text_memory!r}, texts_absorbed={absorbed})"
        )

    def _inner_step(
        self, ids: torch.Tensor, mask: torch.Tensor, start: FastWeights | None, rows_per_task: int = 1
    ) -> FastWeights:
        fast_weights, _ = inner_update(
            self.meta.model,
            self.meta.adapted,
            self.meta.inner_lrs().detach(),
            ids,
            mask,
            create_graph=False,
            start=start,
            rows_per_task=rows_per_task,
            **self.meta.inner_step_options(),
        )
        return fast_weights

    def _window_tokens(self, requested: int | None = None) -> int:
        """Tokens one inner step reads: the checkpoint's `max_context_length` (or fewer, if `requested`), within the
        model's positions."""
        limit = self.settings.max_context_length
        positions = position_limit(self.meta.model)
        if positions is not None:
            limit = min(limit, positions - len(self._prefix))  # past the position limit a model fails or runs off
        if requested is not None:
            if not isinstance(requested, int) or requested < 1:
                raise ValueError(f"`window_tokens` must be a positive integer, got {requested!r}.")
            limit = min(limit, requested)
        return limit

    def _windows(self, text: str, limit: int) -> list[str]:
        """A text longer than one window, cut at sentences into windows absorbed one after another (logged)."""
        tokens = len(encode(self.tokenizer, [text])[0])
        if tokens <= limit:
            return [text]
        windows = split_into_windows(self.tokenizer, text, limit)
        logger.info(
            "A text of %d tokens is longer than the context window (%d): absorbed as %d windows, cut at sentences.",
            tokens,
            limit,
            len(windows),
        )
        return windows

    def _encode_contexts(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self._prefix
        rows, _ = context_rows(self.tokenizer, texts, self._window_tokens(), prefix=prefix)
        input_ids, mask = pad_rows(rows, pad_token_id(self.tokenizer), left=False)
        return input_ids.to(self.device), mask.to(self.device)

    # ----- using
    def forward(self, input_ids: torch.Tensor | None = None, *args, **kwargs):
        """The wrapped model's forward, with whatever was absorbed (per text: each row's own choice)."""
        with use_fast_weights(self._state_for(input_ids, kwargs.get("attention_mask"))):
            return self.meta.model(input_ids, *args, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        """The wrapped model's `generate`, with whatever was absorbed (per text: chosen by each row's prompt)."""
        kwargs.setdefault("pad_token_id", pad_token_id(self.tokenizer))
        with use_fast_weights(self._state_for(input_ids, kwargs.get("attention_mask"))):
            return self.meta.model.generate(input_ids, *args, **kwargs)

    def _state_for(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> FastWeights | None:
        """The absorbed state the rows of `input_ids` run with: with several texts kept apart, each row's own."""
        states = self.text_states
        if states is None:
            return self.fast_weights
        if states.num_tasks == 1:
            return states
        if input_ids is None:
            raise ValueError("Texts are kept apart (text_memory='per_text'): pass `input_ids`, which choose the text.")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return route(self.meta.model, states, input_ids, attention_mask, texts=states.num_tasks)[0]

    def ask(
        self, queries: str | Sequence[str], max_new_tokens: int | None = None, stop: str | None = ANSWER_STOP
    ) -> str | list[str]:
        """Greedy answer(s) to `queries`, given only what was absorbed (the texts are not in the prompt).

        Each answer is the first non-blank piece before `stop` (a new line by default: models tend to go on with the
        next question; a leading line break is skipped).
        """
        single = isinstance(queries, str)
        queries = [queries] if single else _check_queries(queries)
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise ValueError(f"`max_new_tokens` must be a positive integer or None, got {max_new_tokens!r}.")
        prefix = self._prefix
        rows = [prefix + ids for ids in encode(self.tokenizer, queries)]
        input_ids, mask = pad_rows(rows, pad_token_id(self.tokenizer), left=True)
        width = input_ids.shape[1]
        output = self.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            max_new_tokens=max_new_tokens or self.settings.max_answer_length,
            do_sample=False,
            eos_token_id=self.tokenizer.eos_token_id,
            stopping_criteria=answer_stopping(self.tokenizer, width, stop),
        )
        answers = decode_answers(self.tokenizer, output, width, stop)
        return answers[0] if single else answers

    # ----- saving
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """The meta-trained state (never the absorbed texts): adapter, `metaprompt_config.json`, tokenizer."""
        self.meta.save_pretrained(save_directory)
        self.tokenizer.save_pretrained(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload meta-trained checkpoint",
    ) -> str:
        """Save to a temporary folder and upload it, with a model card, in one commit; returns the commit URL."""
        from .hub import push_checkpoint

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_checkpoint(folder, repo_id, private=private, token=token, commit_message=commit_message)


def _check_texts(texts: Any) -> list[str]:
    """Texts as meta-training saw its contexts: strings without surrounding whitespace (a trailing newline from a
    file would otherwise make the model answer with a new line, which `ask` cuts to an empty answer)."""
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, Sequence) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"`absorb` takes a non-empty text or a non-empty list of non-empty texts, got {texts!r:.80}.")
    return [text.strip() for text in texts]


def _check_queries(queries: Any) -> list[str]:
    queries = list(queries) if isinstance(queries, Sequence) else None
    if not queries or not all(isinstance(q, str) and q for q in queries):
        raise ValueError("`ask` takes a non-empty question or a non-empty list of non-empty questions.")
    return queries


def _check_weight_files(directory: Path, settings: MetaPromptSettings) -> None:
    if settings.uses_adapter:
        required = [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
        missing = [name for name in required if not (directory / name).is_file()]
    else:
        missing = [] if any(directory.glob("model*.safetensors")) else ["model.safetensors"]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {', '.join(missing)}: the checkpoint is incomplete.")


@contextlib.contextmanager
def _naming_corrupt_file(path: Path) -> Iterator[None]:
    """safetensors reports a truncated file without its name; say which file to replace."""
    try:
        yield
    except SafetensorError as error:
        raise ValueError(f"{path} is corrupted or truncated ({error}); save or download it again.") from error


def _check_learned_lrs(meta: MetaDistillModel, settings: MetaPromptSettings, directory: Path) -> None:
    """A checkpoint meta-trained with learned inner LRs is a different procedure with the initial LR."""
    if not settings.learn_inner_lr:
        return
    saved = settings.log_inner_lrs.keys() | settings.inner_lrs.keys()
    missing = [name for name in meta.adapted.group_names if name not in saved]
    if missing:
        raise ValueError(
            f"{directory / METAPROMPT_CONFIG_NAME} has learn_inner_lr=true but no learned inner LR for "
            f"{missing[:3]} ({len(missing)} modules): the file is incomplete or belongs to another model."
        )


def _adapter_base(directory: Path) -> str | None:
    import json

    config = directory / ADAPTER_CONFIG_NAME
    return json.loads(config.read_text()).get("base_model_name_or_path") if config.is_file() else None


__all__ = ["METAPROMPT_CONFIG_NAME", "MetaPromptModel"]
