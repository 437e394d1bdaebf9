"""The settings are documented by hand in three places: webapp/settings.py (and
gunicorn.conf.py), the README's settings table and .env.example. These tests keep the
three in agreement: a variable read but not documented, or documented but never read,
fails."""

import re
from pathlib import Path

from django.conf import settings

# Read by a library, not by our files: dj-database-url and Keras.
READ_BY_LIBRARIES = {"DATABASE_URL", "KERAS_HOME"}


def source(name: str) -> str:
    return (Path(settings.BASE_DIR) / name).read_text()


def read_by_us() -> set[str]:
    code = source("webapp/settings.py") + source("gunicorn.conf.py")
    return set(re.findall(r'(?:env_\w+|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]+)"', code))


def readme_table() -> set[str]:
    """The variables named in the first column of the README's settings table."""
    names = set()
    for line in source("README.md").splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def env_example() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]+)=", source(".env.example"), re.MULTILINE))


def test_every_variable_read_is_in_the_readme_and_env_example():
    read = read_by_us()
    assert len(read) > 40, "the pattern finds the settings"
    assert sorted(read - readme_table()) == []
    assert sorted(read - env_example()) == []


def test_every_variable_documented_is_read():
    read = read_by_us() | READ_BY_LIBRARIES
    assert sorted(readme_table() - read) == []
    assert sorted(env_example() - read) == []
