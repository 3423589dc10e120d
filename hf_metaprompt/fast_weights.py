"""Per-task fast weights: every adapted linear layer gets a `[tasks, ...]` weight, so one pass serves the batch.

Row `i` of the batch is computed with slice `i` of each fast weight (or slice 0 when the fast weights hold a single
task, broadcast to any batch). The gradient of a sum of per-task losses w.r.t. such a tensor is exactly the stack of
per-task gradients, which makes the inner step batched without a Python loop over tasks.

Substitution works by temporarily replacing the `forward` of the adapted `nn.Linear`/`Conv1D` modules. The active
state is per thread (threads serving different models or texts never see each other's weights), and it is not tied
to a `with` block of the caller because activation checkpointing recomputes layers during backward, long after the
caller's block has exited: `checkpoint_context_fn` re-activates, during each recompute, exactly the fast weights and
attention kernel that were active when the layer first ran.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .attention import double_backward_attention

__all__ = [
    "AdaptedLinear",
    "AdaptedModules",
    "FastWeights",
    "checkpoint_context_fn",
    "use_fast_weights",
]


@dataclass(frozen=True)
class AdaptedLinear:
    """A linear layer whose weight (and bias) the inner step updates; `group` indexes its inner learning rate."""

    name: str
    module: nn.Module
    group: int

    @property
    def transposed(self) -> bool:
        # GPT-2's Conv1D stores its weight as [in, out].
        return isinstance(self.module, Conv1D)

    def parameters(self) -> list[nn.Parameter]:
        bias = getattr(self.module, "bias", None)
        return [self.module.weight] if bias is None else [self.module.weight, bias]


class AdaptedModules:
    """Which linear layers adapt, grouped by the module that owns one inner learning rate."""

    def __init__(self, linears: Sequence[AdaptedLinear], group_names: Sequence[str]) -> None:
        if not linears:
            raise ValueError("No adaptable linear layer was found: check `lora_target_modules` / `inner_params`.")
        self.linears = list(linears)
        self.group_names = list(group_names)
        self._index = {id(linear.module): i for i, linear in enumerate(self.linears)}

    @classmethod
    def from_peft(cls, peft_model: nn.Module, adapter_name: str = "default") -> AdaptedModules:
        """LoRA mode: the `lora_A`/`lora_B` matrices of each adapted module share one learning rate."""
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        linears, groups = [], []
        for name, module in _base_model(peft_model).named_modules():
            if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
                continue
            if not isinstance(module, LoraLinear):
                raise ValueError(
                    f"Module {name!r} is a {type(module).__name__} LoRA layer; the inner step supports LoRA on linear "
                    "layers only. Remove it from `target_modules`."
                )
            if adapter_name in module.lora_variant:
                raise ValueError(
                    f"Module {name!r} uses a LoRA variant (e.g. DoRA); the inner step supports vanilla LoRA only."
                )
            group = len(groups)
            groups.append(name)
            linears.append(AdaptedLinear(f"{name}.lora_A", module.lora_A[adapter_name], group))
            linears.append(AdaptedLinear(f"{name}.lora_B", module.lora_B[adapter_name], group))
        return cls(linears, groups)

    @classmethod
    def from_linear_layers(cls, model: nn.Module, skip: Callable[[str], bool] = lambda name: False) -> AdaptedModules:
        """Full mode: every linear layer of the model except the output head (and `skip`ped names), one rate each."""
        output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        linears, groups = [], []
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)) and module is not output_head and not skip(name):
                linears.append(AdaptedLinear(name, module, len(groups)))
                groups.append(name)
        return cls(linears, groups)

    def parameters(self) -> list[nn.Parameter]:
        return [p for linear in self.linears for p in linear.parameters()]

    def group_index(self) -> list[int]:
        """The learning-rate group of each tensor of `parameters()`."""
        return [linear.group for linear in self.linears for _ in linear.parameters()]

    def initial(self, num_tasks: int) -> FastWeights:
        """The shared weights viewed as `num_tasks` copies; gradients w.r.t. them are per-task."""
        views = [p.unsqueeze(0).expand(num_tasks, *p.shape) for p in self.parameters()]
        # Frozen weights (plain fine-tuning of a base model) still need gradients w.r.t. their per-task copies.
        return FastWeights(self, [v if v.requires_grad else v.detach().requires_grad_() for v in views])

    def __contains__(self, module: nn.Module) -> bool:
        return id(module) in self._index


class FastWeights:
    """Per-task values of `AdaptedModules.parameters()`, each with a leading task dimension.

    `rows_per_task` > 1 lets consecutive batch rows share a task's weights (the questions of one episode) without
    copying the weights: row `i` uses task `i // rows_per_task`.
    """

    def __init__(self, modules: AdaptedModules, tensors: Sequence[torch.Tensor], rows_per_task: int = 1) -> None:
        self.modules = modules
        self.tensors = list(tensors)
        self.rows_per_task = rows_per_task
        offsets, offset = {}, 0
        for linear in modules.linears:
            offsets[id(linear.module)] = offset
            offset += len(linear.parameters())
        self._offsets = offsets

    @property
    def num_tasks(self) -> int:
        return self.tensors[0].shape[0]

    def sgd_step(self, grads: Sequence[torch.Tensor], lrs: torch.Tensor) -> FastWeights:
        """`w - lr[group] * g` for every tensor: differentiable in the weights, the gradients and the rates."""
        groups = self.modules.group_index()
        return FastWeights(
            self.modules,
            [w - lrs[group].to(w.dtype) * g for w, g, group in zip(self.tensors, grads, groups, strict=True)],
        )

    def for_rows(self, rows_per_task: int) -> FastWeights:
        """The same weights, each serving `rows_per_task` consecutive batch rows."""
        return FastWeights(self.modules, self.tensors, rows_per_task)

    @classmethod
    def cat(cls, parts: Sequence[FastWeights]) -> FastWeights:
        """The tasks of `parts`, in order, as one state (parts made by separate passes over the same modules)."""
        first = parts[0]
        if any(part.modules is not first.modules or part.rows_per_task != first.rows_per_task for part in parts):
            raise ValueError("Only fast weights of the same modules and rows per task can be joined.")
        return cls(
            first.modules,
            [torch.cat(tensors) for tensors in zip(*(p.tensors for p in parts), strict=True)],
            first.rows_per_task,
        )

    def detach(self) -> FastWeights:
        return FastWeights(self.modules, [t.detach() for t in self.tensors], self.rows_per_task)

    def requires_grad_(self) -> FastWeights:
        """Detached leaves that track gradients: the starting point of a further (non-meta) inner step."""
        return FastWeights(self.modules, [t.detach().requires_grad_() for t in self.tensors], self.rows_per_task)

    def _weights_of(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        offset = self._offsets[id(module)]
        bias = self.tensors[offset + 1] if getattr(module, "bias", None) is not None else None
        return self.tensors[offset], bias


@dataclass(frozen=True)
class _ActiveState:
    fast_weights: FastWeights | None = None
    math_attention: bool = False
    memory_efficient: bool = False


class _ThreadState(threading.local):
    """Each thread sees only the fast weights it activated: models absorbing different texts in parallel threads
    stay apart. A layer recomputed by activation checkpointing, on whatever thread autograd picks, gets the state of
    its original forward back from `checkpoint_context_fn`, which captured it explicitly."""

    def __init__(self) -> None:
        self.state = _ActiveState()


_ACTIVE = _ThreadState()
# The patched `forward`s are shared by all threads (they read the calling thread's state): installed while any
# thread uses fast weights of a module, counted so that one thread leaving never unpatches another's modules.
_PATCHED: dict[int, tuple[nn.Module, int]] = {}
_PATCH_LOCK = threading.Lock()


def _batched_forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    fast_weights = _ACTIVE.state.fast_weights
    if fast_weights is None or module not in fast_weights.modules:
        return type(module).forward(module, x)
    weight, bias = fast_weights._weights_of(module)
    tasks = weight.shape[0]
    rows = tasks * fast_weights.rows_per_task
    if tasks != 1 and x.shape[0] != rows:
        raise ValueError(
            f"Fast weights hold {tasks} tasks for {rows} rows but the batch has {x.shape[0]} rows: absorb one text "
            "per row, or a single text for the whole batch."
        )
    x = x.to(weight.dtype)
    if tasks == 1 and not torch.is_grad_enabled():
        # One state for every row, at inference: a plain linear layer (a broadcast batched matmul expands the weight
        # per row). Not under autograd: training keeps the one kernel its batched and looped episodes agree on.
        return nn.functional.linear(
            x, weight[0].T if isinstance(module, Conv1D) else weight[0], bias[0] if bias is not None else None
        )
    # Rows of one task are consecutive: fold them into the sequence dimension of that task's matmul.
    flat = x.reshape(tasks if tasks != 1 else x.shape[0], -1, x.shape[-1])
    out = torch.matmul(flat, weight if isinstance(module, Conv1D) else weight.transpose(-1, -2))
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _install(modules: AdaptedModules) -> None:
    with _PATCH_LOCK:
        for linear in modules.linears:
            module, users = _PATCHED.get(id(linear.module), (linear.module, 0))
            if users == 0:
                module.forward = _bound_forward(module)
            _PATCHED[id(module)] = (module, users + 1)


def _uninstall(modules: AdaptedModules) -> None:
    with _PATCH_LOCK:
        for linear in modules.linears:
            module, users = _PATCHED[id(linear.module)]
            if users == 1:
                module.__dict__.pop("forward", None)
                del _PATCHED[id(module)]
            else:
                _PATCHED[id(module)] = (module, users - 1)


def _bound_forward(module: nn.Module):
    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return _batched_forward(module, x)

    return forward


@contextlib.contextmanager
def use_fast_weights(
    fast_weights: FastWeights | None, math_attention: bool = False, memory_efficient: bool = False
) -> Iterator[None]:
    """Run the model with per-task `fast_weights` (None: the shared weights), optionally with attention that has a
    double backward.

    That is what the inner (context) forward needs: flash and memory-efficient SDPA have no double backward, so
    second-order meta-gradients through them fail. `math_attention` alone uses the math kernel;
    with `memory_efficient`, `"sdpa"` models use `attention.memory_efficient_attention` instead.
    """
    previous = _ACTIVE.state
    if fast_weights is not None:
        _install(fast_weights.modules)
    _ACTIVE.state = _ActiveState(fast_weights, math_attention, memory_efficient)
    try:
        with double_backward_attention(memory_efficient) if math_attention else contextlib.nullcontext():
            yield
    finally:
        _ACTIVE.state = previous
        if fast_weights is not None:
            _uninstall(fast_weights.modules)


def checkpoint_context_fn() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    """`context_fn` for `torch.utils.checkpoint`: the recompute sees the state the original forward saw.

    Without it, a layer recomputed during backward runs with whatever weights are active then (usually the shared
    ones): the meta-gradient silently comes out 40-50% wrong.
    """
    return contextlib.nullcontext(), _Reactivate(_ACTIVE.state)


class _Reactivate:
    """Re-enterable: a layer's forward may be recomputed more than once (inner grad, then outer backward)."""

    def __init__(self, state: _ActiveState) -> None:
        self.state = state
        self._contexts: list[contextlib.AbstractContextManager] = []

    def __enter__(self) -> None:
        context = use_fast_weights(self.state.fast_weights, self.state.math_attention, self.state.memory_efficient)
        context.__enter__()
        self._contexts.append(context)

    def __exit__(self, *exc_info) -> None:
        self._contexts.pop().__exit__(*exc_info)


def _base_model(peft_model: nn.Module) -> nn.Module:
    return peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
