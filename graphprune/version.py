"""The package version (one place; setuptools and the report read it)."""
__version__ = "0.1.0"
