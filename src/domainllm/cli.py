"""Command-line entry point.

Usage:
    domainllm validate config/config.yaml [--print]   # check a config, print it filled
    domainllm diff A B [--fail-on METRIC:TOL]          # compare two model versions
    domainllm pulled [TARGET ...]                      # after dvc pull: no needless rebuild
    domainllm verify [RESULTS]                         # check every artifact for corruption
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
    p.add_argument("--schema", help="schema file (default: config/schema.yaml of this checkout)")
    d = sub.add_parser(
        "diff",
        help="compare two model versions ([RUN_FOLDER_OR_GIT_REV:]VERSION each)",
        description=(
            "Compare two model versions metric by metric (paired bootstrap over shared "
            "evaluation items), with the examples that changed most and model and data "
            "differences. A side is VERSION, RUN_FOLDER:VERSION or GIT_REV:VERSION."
        ),
    )
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--results", default="results", help="run folder for bare versions")
    d.add_argument("--out", help="write OUT.md, OUT.html and OUT.json")
    d.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="METRIC:TOL",
        help="exit 3 if B is worse than A on METRIC by more than TOL (repeatable)",
    )
    d.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    u = sub.add_parser(
        "pulled",
        help="after dvc pull/checkout: check dvc status, then mark Snakemake outputs up to date",
    )
    u.add_argument("targets", nargs="*", help="Snakemake targets (default: all)")
    u.add_argument("--profile", default="profiles/local", help="Snakemake profile")
    v = sub.add_parser(
        "verify",
        help="check every artifact against its write-time checksum, shard manifest or format",
        description=(
            "Check every file under RESULTS: against the sha256 recorded when it was written "
            "(RESULTS/.checksums/), shard manifests, else its format (Parquet, JSON, "
            "safetensors, ...). Exit 1, listing each bad file and why, if anything is corrupt."
        ),
    )
    v.add_argument("results", nargs="?", default="results", help="run folder (default: results)")
    args = parser.parse_args(argv)
    try:
        if args.command == "validate":
            from domainllm.config import SCHEMA_PATH, load_config

            cfg = load_config(args.config, schema_path=args.schema or SCHEMA_PATH)
            if args.print:
                import yaml

                yaml.safe_dump(cfg, sys.stdout, allow_unicode=True, sort_keys=False)
            else:
                print(f"{args.config}: valid")
        elif args.command == "diff":
            from domainllm.evaluate.diff import diff, to_markdown

            result, failed = diff(
                args.a,
                args.b,
                results=args.results,
                out=args.out,
                fail_on=args.fail_on,
                n_boot=args.bootstrap,
            )
            print(to_markdown(result))
            if failed:
                print("regressions:\n  " + "\n  ".join(failed), file=sys.stderr)
                return 3
        elif args.command == "pulled":
            from domainllm.pulled import adopt_pulled

            adopt_pulled(args.targets or None, profile=args.profile)
            print("outputs marked up to date: DVC restored them as recorded in dvc.lock")
        elif args.command == "verify":
            from domainllm.verify import verify

            report = verify(args.results)
            print(report.summary())
            if not report.ok:
                return 1
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
