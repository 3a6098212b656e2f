"""Shared test settings: one intra-op thread (small tensors on a 2-core CI machine run far faster
without OpenMP spin contention), and the `slow` marker for the multi-process launcher tests."""
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: multi-process launcher tests (seconds each)")
    torch.set_num_threads(1)
