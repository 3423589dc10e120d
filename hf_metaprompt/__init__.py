"""hf_metaprompt: meta-train a causal LM so that one gradient step on a text acts like prompting with it."""

from .collator import PromptTargetCollator
from .config import MetaDistillConfig
from .fast_weights import FastWeights, use_fast_weights
from .meta_step import MetaDistillModel
from .metaprompt_model import MetaPromptModel
from .settings import MetaPromptSettings
from .trainer import MetaDistillTrainer

__version__ = "0.1.0"

__all__ = [
    "FastWeights",
    "MetaDistillConfig",
    "MetaDistillModel",
    "MetaDistillTrainer",
    "MetaPromptModel",
    "MetaPromptSettings",
    "PromptTargetCollator",
    "use_fast_weights",
]
