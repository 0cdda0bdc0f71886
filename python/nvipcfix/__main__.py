"""The ``nvipcfix`` command: ``nvipcfix [OPTIONS] -- COMMAND``, ``nvipcfix doctor``.

The console script and ``python3 -m nvipcfix`` run the package's launcher
(the same shell script ``make install`` and the Debian package install),
so every option behaves the same in all three: see ``nvipcfix --help``.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn, Optional, Sequence

from . import launcher_path


def main(argv: Optional[Sequence[str]] = None) -> NoReturn:
    """Replace this process with the launcher, given ``argv`` (``sys.argv[1:]`` by default).

    The exit status is the launcher's: COMMAND's own, or 2 for a usage error.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    launcher = launcher_path()
    try:
        os.execv("/bin/sh", ["/bin/sh", launcher, *args])
    except OSError as error:
        print(f"nvipcfix: cannot run {launcher}: {error}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
