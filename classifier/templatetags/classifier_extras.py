import base64

from django import template

from classifier import explain

register = template.Library()


@register.filter
def humanize_label(label: str) -> str:
    """Keras's class names use underscores: `Walker_hound` reads as "Walker hound"."""
    return label.replace("_", " ")


@register.filter
def percent(probability: float) -> str:
    return f"{probability * 100:.1f}%"


@register.filter
def jpeg_data_uri(data: bytes) -> str:
    """A JPEG (a history thumbnail) as a data: URI, which the site's CSP allows in img."""
    return "data:image/jpeg;base64," + base64.b64encode(bytes(data)).decode()


@register.filter
def overlay_data_uri(thumbnail: bytes, cells: list[list[float]]) -> str:
    """A thumbnail with its activation map drawn over it (explain.overlay_png, the same
    colours and blending as the page's script), as a PNG data: URI."""
    png = explain.overlay_png(bytes(thumbnail), cells)
    return "data:image/png;base64," + base64.b64encode(png).decode()
