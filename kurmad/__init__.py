"""kurmad: a minimal container-host OS core that runs appc pods behind a gRPC API."""

import os

__version__ = "0.1.0"

# grpcio 1.8x turns its fork handlers on by default: each fork() first waits for gRPC's threads
# to pause, and can wait forever when they are busy (a test process hung in fork() so). kurmad
# never uses gRPC in a forked child (the launcher is forked before any gRPC thread, everything
# else forks only to exec), so the handlers only add a way to hang. Read when grpc is imported,
# which every kurmad module does after this package.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
