"""The workflow loaded in-process through Snakemake's API (rules, outputs, directives).

Parsing takes well under a second, against seconds for a `snakemake` subprocess, and
gives the rule objects themselves: their report markers, conda environments, scripts.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import REPO, make_workdir


@contextmanager
def loaded_workflow(tmp: Path, configfile: str = "config/test.yaml", config: dict | None = None):
    """Yield the parsed workflow (snakemake.workflow.Workflow) in a fresh working directory."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    work = make_workdir(tmp)
    cwd = os.getcwd()
    try:
        with SnakemakeApi(OutputSettings()) as api:
            yield api.workflow(
                resource_settings=ResourceSettings(),
                config_settings=ConfigSettings(
                    configfiles=[REPO / configfile], config=config or {}
                ),
                snakefile=REPO / "Snakefile",
                workdir=work,
            )._workflow
    finally:
        os.chdir(cwd)  # the workflow changes into its working directory
