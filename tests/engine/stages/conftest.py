"""One real sandbox pool per module for the stage tests that only send it jobs: starting a pool
forks and prepares its workers, which costs more than the jobs of a test."""
import pytest_asyncio

from tests.doubles import real_pool


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_pool():
    async with real_pool() as pool:
        yield pool
