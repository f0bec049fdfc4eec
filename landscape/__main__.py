"""``python -m landscape`` runs the command-line interface."""

from landscape.cli import main

raise SystemExit(main())
