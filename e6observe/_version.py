"""The package version (read by packaging and by ``e6observe_build_info``)."""

__version__ = "0.1.0"
