"""PID-1 duties and what the host is: the only room that knows whether kurmad booted the
machine (``kurmad boot``) or runs as a daemon on it (``kurmad serve``)."""
