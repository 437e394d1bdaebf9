"""The ResNet50 image classifier: a Django app."""

# The project's version, as in pyproject.toml (tests/test_v2.py holds them equal).
__version__ = "0.1.0"
