"""Audio I/O, datasets and the embedded demo set."""

from compressor.data.audio import from_int16, read_audio, resample, rms, snr_db, to_int16, write_audio
from compressor.data.datasets import (
    LAYOUTS,
    LibriMixDataset,
    MixingDataset,
    PairedFolderDataset,
    list_audio,
    open_dataset,
)
from compressor.data.demo import demo_dataset, demo_root
from compressor.data.mixing import colored_noise, loop_crop, mix_at_snr

__all__ = [
    "LAYOUTS",
    "LibriMixDataset",
    "MixingDataset",
    "PairedFolderDataset",
    "colored_noise",
    "demo_dataset",
    "demo_root",
    "from_int16",
    "list_audio",
    "loop_crop",
    "mix_at_snr",
    "open_dataset",
    "read_audio",
    "resample",
    "rms",
    "snr_db",
    "to_int16",
    "write_audio",
]
