"""hypervm host side: pod specs, the VM driver, the guest channel, the executor and the CLI."""
