"""Loading helpers shared by the task loaders."""

import os
import random
from collections.abc import Callable, Mapping, Sequence

import datasets

DataFiles = str | Sequence[str] | dict[str, str | Sequence[str]]
_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def load_split(
    name_or_path: str | os.PathLike,
    split: str,
    data_files: DataFiles | None = None,
    dataset_config: str | None = None,
) -> datasets.Dataset:
    """Load one split from a Hub dataset, a builder (`"json"`, `"parquet"`, `"text"`, ...) with `data_files`, or a
    single local file.

    Files given as a single path or a list (not a dict) become `split`, so `load_split("dev.json", "validation")`
    works although the `json` builder would call its only split "train".
    """
    path = os.fspath(name_or_path)
    if os.path.isfile(path):
        if data_files is not None:
            raise ValueError(f"Got both a data file ({path}) and `data_files`; pass only one of them.")
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in _BUILDERS:
            raise ValueError(f"Cannot infer the format of {path}: expected one of {sorted(_BUILDERS)}.")
        path, data_files = _BUILDERS[suffix], path
    if data_files is not None and not isinstance(data_files, dict):
        data_files = {split: data_files}
    return datasets.load_dataset(path, dataset_config, split=split, data_files=data_files)


def require_columns(dataset: datasets.Dataset, columns: Sequence[str]) -> None:
    """Fail early, naming the column, rather than with a `KeyError` deep inside `Dataset.map`."""
    missing = [column for column in columns if column not in dataset.column_names]
    if missing:
        raise ValueError(f"The dataset lacks the column(s) {missing}; it has {dataset.column_names}.")


def generated_splits(
    stream: str,
    sizes: Mapping[str, int],
    make_split: Callable[[str, int, random.Random], dict[str, list]],
    features: datasets.Features,
) -> datasets.DatasetDict:
    """The splits of a generated task set: `sizes[split]` tasks each, made by `make_split(split, size, rng)` from the
    split's own random stream (seeded `f"{stream}/{split}"`), so that one split's size leaves the others unchanged."""
    for split, size in sizes.items():
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"`num_{split}` must be a non-negative integer, got {size!r}.")
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(make_split(split, size, random.Random(f"{stream}/{split}")), features)
            for split, size in sizes.items()
        }
    )
