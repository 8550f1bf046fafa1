"""Debian packages as data sources for the example builders: download (or reuse) and unpack .deb files.

Shared by build_demo_data.py and build_robustness_data.py; needs ``apt-get``
(or ``--debs`` with the files already downloaded) and ``dpkg-deb``.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterable


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def fetch_packages(names: Iterable[str], work: Path, debs: Path | None) -> dict[str, tuple[Path, str]]:
    """package -> (unpacked root, .deb file name), from ``debs`` or downloaded into ``work/debs``."""
    debdir = work / "debs"
    debdir.mkdir(parents=True, exist_ok=True)
    found_all = {}
    for name in names:
        found = sorted((debs or debdir).glob(f"{name}_*.deb"))
        if not found:
            print(f"apt-get download {name}", flush=True)
            run(["apt-get", "download", name], cwd=debdir)
            found = sorted(debdir.glob(f"{name}_*.deb"))
        if not found:
            sys.exit(f"could not get {name}")
        root = work / "x" / name
        if not root.exists():
            root.parent.mkdir(parents=True, exist_ok=True)
            run(["dpkg-deb", "-x", str(found[-1]), str(root)])
        found_all[name] = (root, found[-1].name)
        print(f"  {found[-1].name}", flush=True)
    return found_all
