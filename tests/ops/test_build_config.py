"""setup.py's toolchain choices, without building: where nvcc comes from (CUDA_HOME, CUDA_PATH, the PATH,
/usr/local/cuda) and the default TORCH_CUDA_ARCH_LIST (visible GPUs, else 9.0+PTX)."""
import os
import stat
import types

import pytest

from ..bench.scripts import load_script


@pytest.fixture(scope="module")
def setup_py():
    return load_script("setup.py")  # not run as __main__: nothing is built or written


def _toolkit(root):
    nvcc = root / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return root


def test_nvcc_on_path_is_found(setup_py, tmp_path, monkeypatch):
    kit = _toolkit(tmp_path / "cuda-13.0")
    link = tmp_path / "bin"
    link.mkdir()
    (link / "nvcc").symlink_to(kit / "bin" / "nvcc")  # e.g. /usr/bin/nvcc -> the toolkit's
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(link))
    assert setup_py._find_cuda_home() == str(kit)


def test_cuda_home_wins_and_must_hold_nvcc(setup_py, tmp_path, monkeypatch):
    home, other = _toolkit(tmp_path / "home"), _toolkit(tmp_path / "other")
    monkeypatch.setenv("PATH", str(other / "bin"))
    monkeypatch.setenv("CUDA_HOME", str(home))
    assert setup_py._find_cuda_home() == str(home)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "empty"))  # no bin/nvcc there: the next candidate
    monkeypatch.setenv("CUDA_PATH", str(home))
    assert setup_py._find_cuda_home() == str(home)


def test_no_toolkit_anywhere(setup_py, tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    found = setup_py._find_cuda_home()
    assert found is None or found == "/usr/local/cuda" and os.path.exists("/usr/local/cuda/bin/nvcc")


def _torch_with(caps):
    cuda = types.SimpleNamespace(device_count=lambda: len(caps), get_device_capability=lambda i: caps[i])
    return types.SimpleNamespace(cuda=cuda)


@pytest.mark.parametrize("caps, arch", [([], "9.0+PTX"), ([(9, 0)], "9.0+PTX"), ([(8, 0), (9, 0), (8, 0)], "8.0;9.0+PTX"),
                                        ([(8, 9)], "8.9+PTX")])
def test_default_arch_list(setup_py, caps, arch):
    got, source = setup_py._default_arch_list(_torch_with(caps))
    assert got == arch and (source == "the visible GPUs") == bool(caps)


def test_default_arch_list_runs_where_it_is_built(setup_py):
    """The default list, read by the run-time check, runs on the GPUs it was made from (and 9.0+PTX on
    Hopper and later, not on Ampere)."""
    from lmdeq.ops.backends import arch_runs_on

    arch, _ = setup_py._default_arch_list(_torch_with([(8, 0), (8, 6)]))
    assert arch_runs_on(arch, (8, 0)) and arch_runs_on(arch, (8, 6)) and arch_runs_on(arch, (9, 0))
    assert arch_runs_on(setup_py.DEFAULT_ARCH_LIST, (9, 0)) and arch_runs_on(setup_py.DEFAULT_ARCH_LIST, (10, 0))
    assert not arch_runs_on(setup_py.DEFAULT_ARCH_LIST, (8, 0))
