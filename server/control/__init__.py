"""The control plane: the `wsd` command, configuration, the supervisor that owns the slots and the bus
and runs the workers, rolling reloads, status, and the admin socket with its client `wsd ctl`."""
