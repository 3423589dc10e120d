"""`MetaPromptFields` (settings.py) is the one declaration of the inner-loop / distillation / length fields: the
config, the saved settings, the collator and the command line all take them from there, so a new field is one edit."""

from dataclasses import MISSING, fields

import pytest
from transformers import HfArgumentParser

from hf_metaprompt import MetaDistillConfig, MetaPromptSettings, PromptTargetCollator
from hf_metaprompt.settings import INNER_PARAMS, MetaPromptFields

SHARED = list(fields(MetaPromptFields))
CHECKPOINT_ONLY = {"base_model", "inner_lrs", "log_inner_lrs"}  # filled when saving, not training arguments
# Fields whose other value means something only with another field set (refused alone).
NEEDS = {"reversed_context_unit": {"reversed_context_weight": 1.0}}


def other_value(spec):
    """A valid value different from the field's default, derived from its declaration alone."""
    default = spec.default
    choices = spec.metadata.get("choices")
    if choices is not None:
        # `inner_params="all"` needs a model without PEFT, so the config test stays on adapter choices.
        return next(choice for choice in choices if choice != default and choice != INNER_PARAMS[-1])
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default * 2
    if isinstance(default, float):
        return default / 2
    if isinstance(default, str):
        return default + "|"
    if default is None and "int" in str(spec.type):  # `int | None`, as declared or as resolved by a parser
        return 3
    raise AssertionError(f"add a case for {spec.name}: {type(default).__name__}")


def test_settings_and_config_are_built_from_the_same_fields():
    assert issubclass(MetaPromptSettings, MetaPromptFields)
    assert issubclass(MetaDistillConfig, MetaPromptFields)
    own = {spec.name for spec in fields(MetaPromptSettings)} - {spec.name for spec in SHARED}
    assert own == CHECKPOINT_ONLY, "declare new inner-loop fields in MetaPromptFields, not MetaPromptSettings"
    assert all(spec.default is not MISSING for spec in SHARED)


def test_config_defaults_are_the_settings_defaults(tmp_path):
    """min/max_inner_lr default to inner_lr / 100 and * 10: the settings' defaults again."""
    assert MetaDistillConfig(output_dir=str(tmp_path)).to_settings() == MetaPromptSettings()


@pytest.mark.parametrize("spec", SHARED, ids=lambda spec: spec.name)
def test_every_field_reaches_the_saved_settings_and_the_command_line(tmp_path, spec):
    value = other_value(spec)
    needs = NEEDS.get(spec.name, {})
    config = MetaDistillConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, **needs, **{spec.name: value})
    assert getattr(config.to_settings(), spec.name) == value
    config.to_settings().save(tmp_path)  # metaprompt_config.json
    assert getattr(MetaPromptSettings.load(tmp_path), spec.name) == value
    flags = [f"--{name}={needed}" for name, needed in needs.items()]
    (parsed,) = HfArgumentParser(MetaDistillConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--per_device_train_batch_size", "8", *flags, f"--{spec.name}", str(value)]
    )
    assert getattr(parsed, spec.name) == value


def test_collator_takes_its_defaults_and_values_from_the_settings(llama_tokenizer):
    shared = [spec for spec in fields(PromptTargetCollator) if spec.name in {s.name for s in SHARED}]
    assert {spec.name for spec in shared} >= {"max_context_length", "max_answer_length", "distill_on"}
    for spec in shared:
        assert spec.default == getattr(MetaPromptFields, spec.name), spec.name
    declared = {spec.name: spec for spec in SHARED}
    changed = {spec.name: other_value(declared[spec.name]) for spec in shared}
    collator = PromptTargetCollator.from_settings(llama_tokenizer, MetaPromptSettings(**changed))
    assert {name: getattr(collator, name) for name in changed} == changed
    # Overrides win (evaluation scores answers with one text per task).
    settings = MetaPromptSettings(**changed)
    overridden = PromptTargetCollator.from_settings(llama_tokenizer, settings, distill_on="answer")
    assert overridden.distill_on == "answer"
