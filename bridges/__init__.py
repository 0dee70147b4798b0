"""Bridges: the fleet projected into other ecosystems, derived from the manifests devices publish.

Home Assistant MQTT discovery (``ha*``), an MCP server for LLM agents (``mcp*``), Prometheus
metrics (``metrics*``) and the web dashboard with its browser-tab device (``dashboard*``,
``web/``). A new skill appears in each of them with no code of its own (docs/bridges.md).
"""
