"""The pod manager: the lifecycle of pods, their persistence, logs and events."""
