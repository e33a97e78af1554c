"""Fixtures shared across test folders."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread: the test machine's 2 cores are shared, and oversubscribed threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
