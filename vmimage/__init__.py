"""hypervm guest artefacts: the HyperKernel, the initrd, rootfs images and the image cache."""
