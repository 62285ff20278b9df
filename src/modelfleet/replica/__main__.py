"""``python -m modelfleet.replica``: run one replica in the foreground."""

from modelfleet.replica import main

raise SystemExit(main())
