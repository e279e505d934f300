"""megasynth: synthetic-data pre-training studies on Megatron-Core."""

__version__ = "0.1.0"
