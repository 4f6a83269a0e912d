"""The VFIO preflight on fixture sysfs trees: every refusal names its reason, and the accepted cases."""

from __future__ import annotations

import pytest

from vms import vfio


def refused(tree, addresses: list[str], load_module=lambda: None) -> str:
    with pytest.raises(vfio.VfioError) as info:
        vfio.preflight(addresses, tree.root, load_module)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_gpu_takes_its_audio_function_and_leaves_the_root_port(sysfs):
    tree = sysfs()
    tree.gpu_with_audio()
    assert vfio.preflight([tree.GPU], tree.root, load_module=lambda: pytest.fail("vfio-pci is loaded")) == [
        tree.GPU,
        tree.AUDIO,
    ]


def test_a_gpu_alone_in_its_group_loads_vfio_pci_when_needed(sysfs):
    tree = sysfs(vfio_loaded=False)
    tree.device(tree.GPU, 0x030200, group=3)
    loaded = []
    assert vfio.preflight([tree.GPU], tree.root, load_module=lambda: loaded.append(True)) == [tree.GPU]
    assert loaded == [True]


def test_two_requested_gpus_may_share_a_group(sysfs):
    tree = sysfs()
    tree.device(tree.GPU, 0x030000, group=5)
    tree.device(tree.GPU2, 0x030200, group=5)
    assert vfio.preflight([tree.GPU, tree.GPU2], tree.root) == [tree.GPU, tree.GPU2]


@pytest.mark.parametrize("with_directory", [False, True])
def test_refuses_when_the_iommu_is_off(sysfs, with_directory):
    tree = sysfs(iommu=with_directory)
    tree.device(tree.GPU, 0x030000, group=None)
    assert "the IOMMU is off" in refused(tree, [tree.GPU])


def test_refuses_an_address_that_does_not_exist(sysfs):
    tree = sysfs()
    tree.gpu_with_audio()
    message = refused(tree, ["0000:09:00.0"])
    assert "no PCI device 0000:09:00.0" in message and "lspci -D" in message


def test_refuses_a_device_that_is_not_a_display_controller(sysfs):
    tree = sysfs()
    tree.gpu_with_audio()
    tree.device(tree.NIC, 0x020000, group=13, driver="igb")
    message = refused(tree, [tree.NIC])
    assert "network controller (class 0x020000), not a display/3D controller" in message


def test_refuses_a_group_holding_a_device_that_cannot_go_along(sysfs):
    tree = sysfs()
    tree.gpu_with_audio()
    tree.device(tree.SATA, 0x010601, group=12, driver="ahci")
    message = refused(tree, [tree.GPU])
    assert f"shares IOMMU group 12 with {tree.SATA} (storage controller (class 0x010601), driver ahci)" in message
    assert "own IOMMU group" in message


def test_refuses_the_boot_vga_device(sysfs):
    tree = sysfs()
    tree.gpu_with_audio(boot_vga=True)
    assert "drives the host's console" in refused(tree, [tree.GPU])


def test_refuses_a_gpu_with_the_host_framebuffer(sysfs):
    tree = sysfs()
    tree.gpu_with_audio()
    tree.framebuffer(tree.root / "bus" / "pci" / "devices" / tree.GPU)
    assert "drives the host's console" in refused(tree, [tree.GPU])


def test_refuses_when_vfio_pci_cannot_be_loaded(sysfs):
    tree = sysfs(vfio_loaded=False)
    tree.gpu_with_audio()
    message = refused(tree, [tree.GPU], load_module=lambda: "modprobe: FATAL: Module vfio-pci not found")
    assert "vfio-pci cannot be loaded (modprobe: FATAL: Module vfio-pci not found)" in message


def test_refuses_a_gpu_the_host_nvidia_driver_holds(sysfs):
    tree = sysfs()
    tree.ids(tree.device(tree.GPU, 0x030200, group=7, driver="nvidia"), 0x10DE, 0x2335)
    message = refused(tree, [tree.GPU])
    assert f"{tree.GPU} is bound to the host's nvidia driver" in message
    assert "no nvidia-persistenced, display server or CUDA process" in message
    assert "vfio-pci.ids=10de:2335" in message and f"driverctl set-override {tree.GPU} vfio-pci" in message
    tree.module_parameter("nvidia_drm", "modeset", "Y")
    assert "nvidia_drm holds it with modeset=Y" in refused(tree, [tree.GPU])


def test_a_gpu_already_on_vfio_pci_passes(sysfs):
    tree = sysfs()
    tree.device(tree.GPU, 0x030200, group=7, driver="vfio-pci")
    assert vfio.preflight([tree.GPU], tree.root) == [tree.GPU]


def test_refuses_an_iommu_that_cannot_remap_interrupts_unless_unsafe_interrupts_are_allowed(sysfs):
    tree = sysfs()
    tree.device(tree.GPU, 0x030200, group=7)
    tree.intel_iommu("dmar0", 0xF050DA)  # IR (bit 3) set
    assert vfio.preflight([tree.GPU], tree.root) == [tree.GPU]
    tree.intel_iommu("dmar1", 0xF050D2)  # the same without IR
    message = refused(tree, [tree.GPU])
    assert "dmar1 cannot remap interrupts" in message and "allow_unsafe_interrupts=1" in message
    tree.module_parameter("vfio_iommu_type1", "allow_unsafe_interrupts", "Y")
    assert vfio.preflight([tree.GPU], tree.root) == [tree.GPU]


def test_pci_parts_are_libvirt_address_attributes():
    assert vfio.pci_parts("0000:41:00.1") == {"domain": "0x0000", "bus": "0x41", "slot": "0x00", "function": "0x1"}
