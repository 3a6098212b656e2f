"""Training loops, configs, checkpoints and metrics (the room between the CLIs and the engine)."""
