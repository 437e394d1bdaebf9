"""`python manage.py benchmark`: the raw model ceiling and the served speed of a real
gunicorn, side by side. A development tool: loadtest/benchmark.py (see load_tools)."""

from classifier.management.load_tools import load_tool_command

Command = load_tool_command("benchmark")
