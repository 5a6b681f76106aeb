"""hypervm guest artefacts: the HyperKernel, the initrd, root filesystem images and the image cache."""
