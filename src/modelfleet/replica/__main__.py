"""``python -m modelfleet.replica``: run one replica in the foreground."""

import os
import sys

# ``-m`` puts the current folder first on sys.path; azmlinfsrv does not (the app root is
# appended later, after installed packages), so a file in the app root cannot shadow one.
if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from modelfleet.replica import main  # noqa: E402

raise SystemExit(main())
