"""The embedded demo set (examples/demo_data, built by examples/build_demo_data.py)."""

from __future__ import annotations

from pathlib import Path

from compressor.errors import DataError

SPLITS = ("train", "valid", "test")
SAMPLE_RATE = 16000


def demo_root() -> Path:
    """The demo data folder, found from the repository root (editable install)."""
    root = Path(__file__).resolve().parents[2] / "examples" / "demo_data"
    if not (root / "test").is_dir():
        raise DataError(
            f"demo data not found at {root}: it ships with the repository (examples/demo_data); "
            "rebuild it with `python examples/build_demo_data.py`, or install the toolkit "
            "editable from a checkout (pip install -e .)"
        )
    return root


def demo_dataset(
    split: str = "train",
    segment_seconds: float | None = None,
    seed: int = 0,
    snr_range_db: tuple[float, float] = (-5.0, 20.0),
    items_per_epoch: int | None = None,
    **kw,
):
    """The demo split as a dataset.

    ``train`` mixes ``train/speech`` with ``train/noise`` on the fly
    (:class:`MixingDataset`, SNR uniform over ``snr_range_db``); ``valid`` and
    ``test`` are fixed pairs (:class:`PairedFolderDataset`; ``snr_range_db``
    and ``items_per_epoch`` do not apply to them).
    """
    from compressor.data.datasets import MixingDataset, PairedFolderDataset

    if split not in SPLITS:
        raise DataError(f"unknown demo split {split!r}; one of {', '.join(SPLITS)}")
    root = demo_root() / split
    if not root.is_dir():
        raise DataError(f"demo split folder {root} is missing; rebuild with `python examples/build_demo_data.py`")
    kw.setdefault("sample_rate", SAMPLE_RATE)
    if split == "train":
        return MixingDataset(
            root / "speech",
            root / "noise",
            snr_range_db=snr_range_db,
            segment_seconds=segment_seconds,
            seed=seed,
            items_per_epoch=items_per_epoch,
            **kw,
        )
    return PairedFolderDataset(root, segment_seconds=segment_seconds, seed=seed, **kw)
