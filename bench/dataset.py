"""A synthetic, reproducible root filesystem that compresses like a real one (~2.8:1 with
gzip): many small files, a few large ones, a mix of incompressible and repetitive blocks."""

from __future__ import annotations

import json
import random
from pathlib import Path

BLOCK = 4096


def make_rootfs(root: Path, total_bytes: int, files: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    pool = [rng.randbytes(BLOCK) for _ in range(2)]
    sizes = _file_sizes(rng, total_bytes, files)
    for index, size in enumerate(sizes):
        directory = root / f"d{index % 97:02d}" / f"s{index % 13}"
        directory.mkdir(parents=True, exist_ok=True)
        blocks = []
        for _ in range(size // BLOCK + 1):
            blocks.append(rng.randbytes(BLOCK) if rng.random() < 0.33 else rng.choice(pool))
        (directory / f"f{index}").write_bytes(b"".join(blocks)[:size])


def _file_sizes(rng: random.Random, total: int, files: int) -> list[int]:
    weights = [rng.lognormvariate(8.5, 2.0) for _ in range(files)]
    scale = total / sum(weights)
    return [max(1, int(w * scale)) for w in weights]


def write_image_dir(root: Path, name: str, dependencies: list[dict] | None = None) -> Path:
    """``root/manifest`` for an image named ``name``; its rootfs is ``root/rootfs``."""
    manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name,
                "labels": [{"name": "version", "value": "1.0.0"}]}  # fmt: skip
    if dependencies:
        manifest["dependencies"] = dependencies
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest").write_text(json.dumps(manifest))
    return root
