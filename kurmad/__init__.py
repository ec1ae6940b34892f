"""kurmad: a minimal container-host OS core that runs appc pods behind a gRPC API."""

__version__ = "0.1.0"
