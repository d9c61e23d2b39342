"""BIRD control: an asyncio control-socket client and the calico-bird shim that runs BIRD."""
