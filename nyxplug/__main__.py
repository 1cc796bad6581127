"""``python -m nyxplug``: the same command line as the ``nyxplug`` script."""

from nyxplug.cli import main

raise SystemExit(main())
