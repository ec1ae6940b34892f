from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
APPC_DATA = DATA / "appc"
