"""Where the non-secret tenant config lives: one item per tenant in the state table.

Credentials never go here (Secrets Manager only). Functions read configs through this
interface and cache them for the life of the execution environment, bounded by ``max_age_s``.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from ehrbridge.aws.clients import client
from ehrbridge.contracts.tenant import TenantConfig

_PK = "tenant#{tenant_id}"
_SK = "config"


class TenantNotFound(LookupError):
    pass


class TenantStore(Protocol):
    def get(self, tenant_id: str) -> TenantConfig: ...

    def put(self, config: TenantConfig) -> None: ...

    def delete(self, tenant_id: str) -> None: ...

    def list(self) -> list[TenantConfig]: ...


class InMemoryTenantStore:
    def __init__(self, configs: list[TenantConfig] | None = None) -> None:
        self._configs = {c.tenant_id: c for c in configs or []}

    def get(self, tenant_id: str) -> TenantConfig:
        try:
            return self._configs[tenant_id]
        except KeyError:
            raise TenantNotFound(f"tenant {tenant_id} is not configured") from None

    def put(self, config: TenantConfig) -> None:
        self._configs[config.tenant_id] = config

    def delete(self, tenant_id: str) -> None:
        self._configs.pop(tenant_id, None)

    def list(self) -> list[TenantConfig]:
        return sorted(self._configs.values(), key=lambda c: c.tenant_id)


class DynamoTenantStore:
    def __init__(self, table_name: str, ddb: Any = None, max_age_s: float = 300.0) -> None:
        self.table_name = table_name
        self._ddb = ddb
        self.max_age_s = max_age_s
        self._cache: dict[str, tuple[float, TenantConfig]] = {}

    @property
    def ddb(self) -> Any:
        return self._ddb or client("dynamodb")

    def get(self, tenant_id: str) -> TenantConfig:
        cached = self._cache.get(tenant_id)
        if cached and time.monotonic() - cached[0] < self.max_age_s:
            return cached[1]
        item = self.ddb.get_item(TableName=self.table_name,
                                 Key={"pk": {"S": _PK.format(tenant_id=tenant_id)}, "sk": {"S": _SK}},
                                 ConsistentRead=True).get("Item")
        if not item:
            raise TenantNotFound(f"tenant {tenant_id} is not configured")
        config = TenantConfig.model_validate_json(item["config"]["S"])
        self._cache[tenant_id] = (time.monotonic(), config)
        return config

    def put(self, config: TenantConfig) -> None:
        self.ddb.put_item(TableName=self.table_name, Item={
            "pk": {"S": _PK.format(tenant_id=config.tenant_id)}, "sk": {"S": _SK},
            "config": {"S": config.model_dump_json(exclude_none=True)}})
        self._cache.pop(config.tenant_id, None)

    def delete(self, tenant_id: str) -> None:
        self.ddb.delete_item(TableName=self.table_name,
                             Key={"pk": {"S": _PK.format(tenant_id=tenant_id)}, "sk": {"S": _SK}})
        self._cache.pop(tenant_id, None)

    def list(self) -> list[TenantConfig]:
        configs: list[TenantConfig] = []
        paginator = self.ddb.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table_name, FilterExpression="sk = :sk AND begins_with(pk, :p)",
                                       ExpressionAttributeValues={":sk": {"S": _SK}, ":p": {"S": "tenant#"}}):
            configs.extend(TenantConfig.model_validate_json(i["config"]["S"]) for i in page.get("Items", []))
        return sorted(configs, key=lambda c: c.tenant_id)
