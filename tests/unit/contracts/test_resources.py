from __future__ import annotations

from ehrbridge import resources
from tests.conftest import REPO


def test_every_queue_is_fifo_with_a_dlq_and_names_are_unique() -> None:
    names = [q.physical_name() for q in resources.QUEUES] + [q.dlq_physical_name() for q in resources.QUEUES]
    assert len(set(names)) == len(names)
    assert all(q.fifo and q.max_receive_count == 5 for q in resources.QUEUES)
    assert all(n.endswith(".fifo") and len(n) <= 80 for n in names)


def test_functions_reference_defined_resources() -> None:
    for fn in resources.FUNCTIONS:
        for queue in (*fn.produces, *([fn.consumes] if fn.consumes else [])):
            resources.queue(queue)
        for table in fn.tables:
            resources.table(table)
        for bucket in fn.buckets:
            resources.bucket(bucket)
        assert (REPO / fn.handler_module).is_file(), fn.handler_module


def test_env_names_are_distinct() -> None:
    envs = [q.url_env for q in resources.QUEUES] + [q.dlq_url_env for q in resources.QUEUES] + \
        [t.name_env for t in resources.TABLES] + [b.name_env for b in resources.BUCKETS]
    assert len(envs) == len(set(envs))
