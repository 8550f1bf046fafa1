"""Build the speech-quality data set of the bam recipe (issue 6) from the demo set.

    python examples/bam_build_data.py --out runs/bam_data

Writes {train,valid,test}.npz (log-mel features, PESQ-WB labels, per-clip
info) and a few degraded test clips as WAV for `compress run`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from compressor.bam.data import QualityDataConfig, build_split, default_enhancers, save_split
from compressor.bam.frontend import MelConfig
from compressor.data.audio import write_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bam_data"))
    parser.add_argument("--splits", nargs="+", default=["test", "valid", "train"])
    parser.add_argument("--config", type=Path, help="QualityDataConfig JSON (default: the defaults)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = QualityDataConfig.from_dict(json.loads(args.config.read_text())) if args.config else QualityDataConfig()
    mel = MelConfig()
    enhancers = default_enhancers()
    for split in args.splits:
        data = build_split(split, cfg, enhancers, mel, keep_audio=6 if split == "test" else 0)
        save_split(args.out / f"{split}.npz", data, cfg, mel)
        labels = data["labels"]
        kinds = {k: int(sum(i["kind"] == k for i in data["info"])) for k in sorted({i["kind"] for i in data["info"]})}
        print(f"{split}: {labels.size} clips, PESQ mean {labels.mean():.2f} std {labels.std():.2f} "
              f"[{labels.min():.2f}, {labels.max():.2f}], kinds {kinds}")
        for k, clip in enumerate(data["audio"]):
            write_audio(args.out / "clips" / f"test_{k}_pesq{labels[k]:.2f}.wav", clip, mel.sample_rate)
    np.save(args.out / "done.npy", np.ones(1))


if __name__ == "__main__":
    main()
