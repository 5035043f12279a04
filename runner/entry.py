"""The `t3-autoupdate` console script. `t3-autoupdate mint <os_user>` runs on every login
(the dispatch's helper execs it), so it skips the CLI module and its imports (argparse,
logging, the run machinery): only the config and the mint are loaded. Everything else
goes to `runner.cli.main`."""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 2 and argv[0] == "mint" and not argv[1].startswith("-"):
        from .config import ConfigError, load_config
        from .mint import mint_main

        try:
            cfg = load_config()
        except ConfigError as exc:
            print(f"t3-autoupdate: configuration error:\n{exc}", file=sys.stderr)
            return 2
        return mint_main(cfg, argv[1], sys.stdout)
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
