from django import template

register = template.Library()


@register.filter
def humanize_label(label: str) -> str:
    """Keras's class names use underscores: `Walker_hound` reads as "Walker hound"."""
    return label.replace("_", " ")


@register.filter
def percent(probability: float) -> str:
    return f"{probability * 100:.1f}%"
