"""Subcommands of the `promptdex` CLI that belong to the core."""
