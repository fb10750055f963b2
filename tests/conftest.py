from __future__ import annotations

from pathlib import Path

import pytest
from support import PASSWORD

import livecam


@pytest.fixture
def settings(tmp_path: Path) -> livecam.Settings:
    return livecam.Settings(db_path=tmp_path / "livecam.db", password=PASSWORD,
                            persist_interval=0.05)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(livecam.create_app(settings))


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {PASSWORD}"}
