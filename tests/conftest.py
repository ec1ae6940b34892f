from __future__ import annotations

from pathlib import Path

import kurmad  # noqa: F401  (first: it turns gRPC's fork handlers off before a test imports grpc)

DATA = Path(__file__).parent / "data"
APPC_DATA = DATA / "appc"
