"""Builders of what the kurmad boot image carries: the base system images (``images``)."""
