"""Fixtures shared by the test modules: a Settler per shipped pack (loaded and compiled once)."""
import pytest

from kernel.api import Settler, shipped_pack_path


@pytest.fixture(scope="session")
def rural():
    """The rural-scheme sample pack of SETTLEMENT.md section 8 with the shipped catalogue."""
    return Settler.from_files(shipped_pack_path("sample_rural"))


@pytest.fixture(scope="session")
def city():
    """The employee-and-resident sample pack with the shipped catalogue."""
    return Settler.from_files(shipped_pack_path("sample_city"))
