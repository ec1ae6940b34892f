"""OCI and Docker images: references (reference.py) and the documents a registry or an archive
serves (documents.py). The registry client, the archive readers and the shared layer store
come here too (DESIGN.md); they feed the one image store, so pods see one kind of image."""
