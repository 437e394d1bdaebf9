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
    return set(env_example_values())


def env_example_values() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", source(".env.example"), re.MULTILINE))


def readme_defaults() -> dict[str, str]:
    """Variable -> its default, for the README table's rows of one variable whose default
    is one literal value."""
    defaults = {}
    for line in source("README.md").splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[1])
            value = re.fullmatch(r"\s*`([^`]*)`\s*", cells[2])
            if len(names) == 1 and value:
                defaults[names[0]] = value.group(1)
    return defaults


def test_every_variable_read_is_in_the_readme_and_env_example():
    read = read_by_us()
    assert len(read) > 40, "the pattern finds the settings"
    assert sorted(read - readme_table()) == []
    assert sorted(read - env_example()) == []


def test_every_variable_documented_is_read():
    read = read_by_us() | READ_BY_LIBRARIES
    assert sorted(readme_table() - read) == []
    assert sorted(env_example() - read) == []


def test_env_example_sets_the_defaults_the_readme_gives():
    # .env.example promises "every setting, with its default": a value there that differs
    # from the README's default would quietly change the service for whoever copies it.
    # An empty value means "unset" (defaults that name another setting or a path).
    defaults = readme_defaults()
    assert len(defaults) > 30, "the pattern finds the table's defaults"
    differing = {
        name: (defaults[name], value)
        for name, value in env_example_values().items()
        if value and name in defaults and defaults[name] != value
    }
    assert differing == {}
