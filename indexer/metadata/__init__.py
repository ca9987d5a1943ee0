"""Metadata readers: image containers and every front end's generation-parameter formats."""
