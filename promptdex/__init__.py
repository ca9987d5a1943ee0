"""promptdex: a self-hosted, Lexica-style search engine for Stable Diffusion images."""

__version__ = "0.1.0"
