"""The version, in one place: hatchling reads it for the package metadata."""

__version__ = "0.1.0.dev0"
