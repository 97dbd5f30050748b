"""Command-line entry point.

Usage:
    domainllm validate config/config.yaml [--print]   # check a config, print it filled
"""

from __future__ import annotations

import argparse
import sys

from domainllm.errors import PipelineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="domainllm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="validate a config file against config/schema.yaml")
    p.add_argument("config")
    p.add_argument("--print", action="store_true", help="print the config with defaults filled")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            from domainllm.config import load_config

            cfg = load_config(args.config)
            if args.print:
                import yaml

                yaml.safe_dump(cfg, sys.stdout, allow_unicode=True, sort_keys=False)
            else:
                print(f"{args.config}: valid")
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
