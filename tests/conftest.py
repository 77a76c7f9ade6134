import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Commands run in-process (`main([... "--threads", "1"])`) set torch's thread count for the whole
    process; float32 tolerances of later tests depend on the reduction order, so each test starts from
    the same count."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
