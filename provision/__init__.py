"""pyinfra deploys that turn a bare-metal MI250/MI300X or NVIDIA host into a node that runs the kit's images."""
