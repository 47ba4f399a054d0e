"""Plug-ins for other LLM gateways: ``prefroute.integrations.litellm`` (needs ``litellm``)."""
