"""`python manage.py soak`: sustained, bounded load on a real gunicorn (5xx, memory growth,
history rows). A development tool: loadtest/soak.py (see load_tools)."""

from classifier.management.load_tools import load_tool_command

Command = load_tool_command("soak")
