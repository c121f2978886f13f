"""slimlab compression: methods, recipes, the study runner and the `compress` CLI."""

__version__ = "0.1.0"
