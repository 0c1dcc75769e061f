"""HTTP front ends of the agent. ``lean.LeanSite`` serves the KV hot path itself (an asyncio
Protocol with httptools' C parser) and hands every other connection to the aiohttp app."""
