"""``python -m swarmkeeper`` runs the same command line as the console script."""

from swarmkeeper.cli import main

raise SystemExit(main())
