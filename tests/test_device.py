import pytest
import torch

from maaskit.device import DeviceNotAvailableError, available_devices, pick_device, seed_everything


def test_auto_picks_the_first_available_device():
    assert pick_device("auto") == torch.device(available_devices()[0])
    assert available_devices()[-1] == "cpu"


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert available_devices()[:2] == ["cuda:0", "cuda:1"]
    assert pick_device("auto") == torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")


def test_cpu_and_device_objects_pass_through():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_explicit_cuda_without_a_gpu_names_what_is_available():
    with pytest.raises(DeviceNotAvailableError, match=r"no CUDA GPU.*available: .*cpu"):
        pick_device("cuda")
    with pytest.raises(DeviceNotAvailableError, match="cuda:3"):
        pick_device("cuda:3")


def test_mps_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceNotAvailableError, match="'mps' is not available.*cpu"):
        pick_device("mps")


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda:x", "cpu:0", ""])
def test_unknown_device_names_list_the_valid_ones(bad):
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda, mps"):
        pick_device(bad)


def test_device_must_be_a_string():
    with pytest.raises(TypeError):
        pick_device(0)


def _train_a_little(seed):
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(256, 20), torch.randint(0, 3, (256,))
    for _ in range(20):
        idx = torch.randperm(256)[:32]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_seed_everything_makes_cpu_training_bitwise_repeatable():
    a, b, c = _train_a_little(7), _train_a_little(7), _train_a_little(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, True, "0"])
def test_seed_must_be_a_32_bit_integer(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)
