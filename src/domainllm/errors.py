"""Errors the pipeline raises for bad input: each names the file, line or config key."""


class PipelineError(Exception):
    """Bad input or a failed precondition; the message says where and what."""


class ConfigError(PipelineError):
    """The configuration does not match the schema; the message names the key path."""


class DataError(PipelineError):
    """An input file is malformed; the message names the file and, where known, the line."""
