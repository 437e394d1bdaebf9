"""Management commands over the development-only load tools in loadtest/ (`benchmark`,
`soak`, `hostile`): each command is this thin shell, the tool's code is loadtest's.

The container image leaves loadtest/ and the development requirements out. There, such a
command says where to run it and exits 1, instead of failing on an import.
"""

import importlib
import sys

from django.core.management.base import BaseCommand, CommandError


def load_tool_command(name: str) -> type[BaseCommand]:
    """The command for `loadtest.<name>`, a module with HELP, add_arguments(parser) and
    run(options, out), which raises loadtest.Failed when the run fails."""
    try:
        tool = importlib.import_module(f"loadtest.{name}")
        missing = ""
    except ModuleNotFoundError as exc:  # the image: no loadtest/, no `requests`
        tool, missing = None, exc.name or str(exc)

    unavailable = (
        f"`manage.py {name}` is a development tool: run it from a checkout of the project "
        f"after `make install` (it needs loadtest/ and requirements-dev.txt, which the "
        f"container image leaves out; missing here: {missing})."
    )

    class Command(BaseCommand):
        help = tool.HELP if tool else unavailable

        def run_from_argv(self, argv):
            if tool is None:  # before parsing: the tool's arguments are unknown here
                self.stderr.write(unavailable)
                sys.exit(1)
            super().run_from_argv(argv)

        def add_arguments(self, parser):
            if tool is not None:
                tool.add_arguments(parser)

        def handle(self, *args, **options):
            if tool is None:
                raise CommandError(unavailable)
            from loadtest import Failed

            try:
                tool.run(options, self.stdout)
            except Failed as exc:
                raise CommandError(str(exc)) from exc

    return Command
