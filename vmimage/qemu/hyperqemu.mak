# HyperQEMU's devices (configs/devices/x86_64-softmmu/hyperqemu.mak, built with
# --without-default-devices): what executor/libvirt_xml.py asks libvirt for, nothing else.
# The pc machine (i440fx, PIIX4 ACPI, fw_cfg, i8042, RTC) comes with the board.
CONFIG_I440FX=y
# the console (ttyS0)
CONFIG_SERIAL_ISA=y
CONFIG_VIRTIO_PCI=y
# layers (virtio-blk at boot, virtio-scsi LUNs hot-added to pool VMs)
CONFIG_VIRTIO_BLK=y
CONFIG_VIRTIO_SCSI=y
# the pod's network (user-mode NIC), the init channel, free page reporting, entropy
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_SERIAL=y
CONFIG_VIRTIO_BALLOON=y
CONFIG_VIRTIO_RNG=y
# volumes and the pool's share (virtio-9p)
CONFIG_VIRTIO_9P=y
