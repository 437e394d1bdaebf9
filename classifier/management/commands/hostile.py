"""`python manage.py hostile`: attacks on a real gunicorn and what each costs an honest
client beside it. A development tool: loadtest/hostile.py (see load_tools)."""

from classifier.management.load_tools import load_tool_command

Command = load_tool_command("hostile")
