"""The gRPC API: servicers, authentication and server wiring; the generated code is in v1/."""

# The name in every kurmad server certificate, checked by clients whatever address they
# dialled: the host's own CA is what pins its identity.
SERVER_NAME = "kurmad"
# The initial metadata of a long call the daemon admitted (api/limits.py): a client knows its
# stream is open before anything arrives on it.
ADMITTED = ("kurmad-stream", "admitted")
