"""``python -m taskschedctl``: the same as the ``taskschedctl`` command."""

from taskschedctl.cli import main

main()
