"""``python -m eventflow.sim`` is ``eventflow-sim``."""

from eventflow.sim.cli import main

raise SystemExit(main())
