"""python -m executor.cli: the hypervm command."""

from executor.cli.main import main

raise SystemExit(main())
