"""What the bus does for a cluster: several server URLs, retries through a failover, and a
stream left alone when its configuration is already right."""

from __future__ import annotations

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from sluiceway.common import bus
from sluiceway.common.settings import Settings, SettingsError


class Flaky:
    """An operation that fails with the given errors, in order, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "stored"


async def test_an_operation_that_meets_a_failover_is_tried_again_until_it_succeeds() -> None:
    op = Flaky(NatsTimeoutError(), NoRespondersError(), ServiceUnavailableError())
    assert await bus.retrying(op, "appending", budget_s=10) == "stored"
    assert op.calls == 4


async def test_a_publish_repeated_while_the_first_is_replicated_waits_for_it() -> None:
    in_process = APIError(code=409, err_code=10158, description="duplicate msg id in process")
    op = Flaky(NatsTimeoutError(), in_process, in_process)
    assert await bus.retrying(op, "appending", budget_s=10) == "stored"
    assert op.calls == 4


async def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    op = Flaky(BadRequestError(code=400, err_code=10071, description="wrong last sequence"))
    with pytest.raises(BadRequestError):
        await bus.retrying(op, "appending", budget_s=10)
    assert op.calls == 1


async def test_retries_stop_when_the_budget_is_spent() -> None:
    op = Flaky(*(NatsTimeoutError() for _ in range(100)))
    with pytest.raises(NatsTimeoutError):
        await bus.retrying(op, "appending", budget_s=0.35)
    assert 2 <= op.calls < 10


@pytest.mark.parametrize(
    ("setting", "servers"),
    [
        ("nats://127.0.0.1:4222", ["nats://127.0.0.1:4222"]),
        (
            "nats://n1:4222, nats://n2:4222,nats://n3:4222",
            ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"],
        ),
        ("n1:4222,tls://n2:4222", ["n1:4222", "tls://n2:4222"]),
        ("nats://sluiceway-nats", ["nats://sluiceway-nats"]),
    ],
)
def test_a_nats_url_may_list_every_node_of_a_cluster(setting: str, servers: list[str]) -> None:
    assert bus.server_urls(setting) == servers
    assert Settings.from_env({"SLUICEWAY_NATS_URL": setting}).nats_url == setting


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "expected nats://host:port"),
        ("nats://n1:4222,,nats://n2:4222", "several separated by commas"),
        ("nats://n1:4222,", "several separated by commas"),
        ("http://n1:4222", "'http://n1:4222': expected nats://host:port"),
        ("nats://n1:port", "not a NATS URL"),
        ("nats://:4222", "expected nats://host:port"),
        ("nats://n1:4222,ws://n2:8080", "websocket and plain NATS URLs cannot be mixed"),
    ],
)
def test_a_bad_nats_url_is_refused_naming_the_variable(setting: str, message: str) -> None:
    with pytest.raises(SettingsError, match="SLUICEWAY_NATS_URL") as err:
        Settings.from_env({"SLUICEWAY_NATS_URL": setting})
    assert message in str(err.value)


def test_a_refused_nats_url_never_repeats_its_password() -> None:
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"SLUICEWAY_NATS_URL": "nats://app:s3cret@n1:4222,,"})
    assert "s3cret" not in str(err.value)


def test_a_stream_is_updated_only_when_a_field_this_version_sets_differs() -> None:
    wanted = StreamConfig(
        name="S", subjects=["s.>"], num_replicas=3, duplicate_window=300.0,
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
    )  # fmt: skip
    # the server's copy carries every default too; those are not ours to compare
    current = StreamConfig(
        name="S", subjects=["s.>"], num_replicas=3, duplicate_window=300.0,
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, max_msgs=-1, max_bytes=-1,
    )  # fmt: skip
    assert not bus.config_differs(current, wanted)
    current.num_replicas = 1
    assert bus.config_differs(current, wanted)
