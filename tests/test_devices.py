"""``--devices cuda:N`` inside an operator's ``CUDA_VISIBLE_DEVICES`` (pure functions, no GPU needed)."""

from __future__ import annotations

import os

import pytest

from engine.llm.engine import _visible_device, cuda_visible_devices_for

UUID_A = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"
UUID_B = "GPU-1a2b3c4d-0000-1111-2222-333344445555"
MIG = "MIG-5c1d2e3f-aaaa-bbbb-cccc-ddddeeeeffff"


@pytest.mark.parametrize("device", [None, "", "cpu", "cuda", "auto"])
def test_no_pin_for_non_indexed_devices(device: str | None) -> None:
    assert cuda_visible_devices_for(device, None) is None
    assert cuda_visible_devices_for(device, "2,3") is None


@pytest.mark.parametrize(("device", "expected"), [("cuda:0", "0"), ("cuda:1", "1"), ("cuda:7", "7")])
def test_unset_visible_list_pins_the_physical_index(device: str, expected: str) -> None:
    assert cuda_visible_devices_for(device, None) == expected


@pytest.mark.parametrize(("device", "expected"), [("cuda:0", "2"), ("cuda:1", "3")])
def test_index_counts_within_the_operators_list(device: str, expected: str) -> None:
    assert cuda_visible_devices_for(device, "2,3") == expected
    assert cuda_visible_devices_for(device, " 2 , 3 ") == expected  # spaces as people type them


def test_uuid_and_mig_entries_of_the_list_are_passed_through() -> None:
    visible = f"{UUID_A},{MIG}"
    assert cuda_visible_devices_for("cuda:0", visible) == UUID_A
    assert cuda_visible_devices_for("cuda:1", visible) == MIG


def test_device_given_as_uuid() -> None:
    assert cuda_visible_devices_for(f"cuda:{UUID_B}", None) == UUID_B
    assert cuda_visible_devices_for(f"cuda:{MIG}", f"{UUID_A},{MIG}") == MIG
    assert cuda_visible_devices_for("cuda:GPU-8932f937", UUID_A) == "GPU-8932f937"  # CUDA's unique prefix
    with pytest.raises(ValueError, match="not in CUDA_VISIBLE_DEVICES"):
        cuda_visible_devices_for(f"cuda:{UUID_B}", UUID_A)


@pytest.mark.parametrize(("device", "visible"), [("cuda:2", "2,3"), ("cuda:1", "5"), ("cuda:0", ""),
                                                 ("cuda:1", "0,-1,1")])
def test_index_beyond_the_visible_list_is_a_clear_error(device: str, visible: str) -> None:
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES") as info:
        cuda_visible_devices_for(device, visible)
    assert "cuda:N counts within that list" in str(info.value)


def test_list_ends_at_the_first_invalid_entry_as_in_cuda() -> None:
    assert cuda_visible_devices_for("cuda:0", "0,-1,1") == "0"


@pytest.mark.parametrize("device", ["cuda:x", "cuda:-1", "cuda:1.5", "cuda:", "cuda:٣"])
def test_malformed_device_is_rejected(device: str) -> None:
    with pytest.raises(ValueError, match="expected cuda:N"):
        cuda_visible_devices_for(device, None)


def test_context_maps_then_restores_the_operators_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with _visible_device("cuda:1"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    with _visible_device(None):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(ValueError), _visible_device("cuda:2"):
        pass
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_context_without_an_operator_value_leaves_none_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with _visible_device("cuda:1"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
