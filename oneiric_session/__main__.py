"""`python -m oneiric_session`: the same as the `oneiric-session` command."""

from oneiric_session.cli import main

raise SystemExit(main())
