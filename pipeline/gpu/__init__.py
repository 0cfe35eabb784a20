"""GPU plumbing: the device context (streams, events, awaiting them from trio), the
pinned host ring, the busy clock and the turns renders take at one GPU. On the CPU the
same calls are no-ops."""
