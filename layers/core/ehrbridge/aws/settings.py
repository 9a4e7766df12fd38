"""Where a function finds its resources: physical names from environment variables.

Names of the variables come from ehrbridge.resources, the same definitions CDK deploys.
Secrets never travel in environment variables: only their names do.
"""

from __future__ import annotations

import os

from ehrbridge import resources


class MissingSetting(RuntimeError):
    pass


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise MissingSetting(f"environment variable {name} is not set")
    return value


def queue_url(name: str) -> str:
    return _env(resources.queue(name).url_env)


def dlq_url(name: str) -> str:
    return _env(resources.queue(name).dlq_url_env)


def table_name(name: str) -> str:
    return _env(resources.table(name).name_env)


def bucket_name(name: str) -> str:
    return _env(resources.bucket(name).name_env)
