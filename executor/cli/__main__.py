"""python -m executor.cli: the hypervm command (the console script's entry, fast path first)."""

from executor.cli.fastrun import main

raise SystemExit(main())
