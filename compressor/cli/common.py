"""Options and helpers shared by the ``compress`` commands."""
from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click
import torch

from compressor.checkpoint import LoadedModel, load_model
from compressor.errors import CompressorError
from compressor.training import distributed

log = logging.getLogger("compressor")


def handle_errors(func: Callable) -> Callable:
    """Our errors become one clear line and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CompressorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)

    return wrapper


def model_options(func: Callable) -> Callable:
    """MODEL argument plus --model-factory / --trust-pickle."""
    func = click.option("--trust-pickle", is_flag=True,
                        help="Allow loading a pickled full module (runs code from the file: only for files you trust).")(func)
    func = click.option("--model-factory", metavar="PKG.MODULE:FUNCTION",
                        help="Build the model by calling this function, then load MODEL as its state_dict.")(func)
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))(func)


def load(model: Path, model_factory: str | None, trust_pickle: bool) -> LoadedModel:
    return load_model(model, model_factory=model_factory, trust_pickle=trust_pickle)


def data_option(default: str = "demo", help_extra: str = "") -> Callable:
    """--data plus --strict-audio."""
    data = click.option(
        "--data", default=default, show_default=True,
        help="Dataset: 'demo' (the embedded demo set), a LibriMix csv or folder, a paired folder "
             "(noisy/ + clean/) or a mixing folder (speech/ + noise/). " + help_extra)
    strict = click.option(
        "--strict-audio", is_flag=True,
        help="Refuse audio at another sample rate or with several channels (default: resample / "
             "down-mix with a warning).")
    return lambda func: data(strict(func))


def setup_logging(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("compressor").setLevel(logging.INFO if verbose or distributed.is_main_process() else logging.WARNING)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def write_json(path: Path, payload: Any) -> None:
    from compressor.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def parse_json_option(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object given inline or as a path to a .json file."""
    if not text:
        return {}
    source = Path(text)
    raw = source.read_text() if source.suffix == ".json" and source.is_file() else text
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise click.BadParameter(f"{what} must be a JSON object")
    return value


def training_sets(data: str, valid_data: str | None, segment_seconds: float, seed: int,
                  strict_audio: bool = False) -> tuple[Any, Any]:
    """(train, valid) datasets: the demo's train/valid splits, or a path (+ optional valid path)."""
    from compressor.data import open_dataset

    if data == "demo":
        data, valid_data = "demo:train", valid_data or "demo:valid"
    train = open_dataset(data, segment_seconds=segment_seconds, seed=seed, strict_audio=strict_audio)
    valid = open_dataset(valid_data, strict_audio=strict_audio) if valid_data else None
    return train, valid


def eval_set(data: str, strict_audio: bool = False) -> Any:
    """The evaluation dataset: the demo's test split, or a path."""
    from compressor.data import open_dataset

    return open_dataset("demo:test" if data == "demo" else data, strict_audio=strict_audio)
