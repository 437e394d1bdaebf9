"""Path converters of the URLconf, registered once, when this module is first imported
(webapp/urls.py may be imported again: a test that changes the admin's URL reloads it)."""

from django.urls import register_converter


class ModelName:
    """A model's name in a path: no slash, and no colon (TF Serving's `:predict`)."""

    regex = "[^/:]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ModelName, "model")
