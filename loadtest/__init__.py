"""Development tools that put load on a real server: `manage.py benchmark`, `soak` and
`hostile` are thin commands over `benchmark`, `soak` and `hostile` here.

Not part of the service: the container image leaves this package out, and it needs the
development requirements (requirements-dev.txt, `make install`). Every tool starts its own
gunicorn on a loopback port (`server`) and sends bounded load to it (`load`); no traffic
leaves 127.0.0.0/8 and nothing is downloaded.
"""


class Failed(Exception):
    """A tool's run failed; the message says what (the command exits non-zero with it)."""
