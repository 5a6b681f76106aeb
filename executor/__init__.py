"""hypervm host side: pod specs, the libvirt VM driver, the guest channel, the executor and the CLI."""
