"""One real sandbox pool per module for the stage tests that only send it jobs: starting a pool
forks and prepares its workers, which costs more than the jobs of a test. A test that uses it
runs on the module's event loop (`@on_module_loop`), where the pool lives."""
import pytest
import pytest_asyncio

from tests.doubles import real_pool

on_module_loop = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_pool():
    async with real_pool() as pool:
        yield pool
