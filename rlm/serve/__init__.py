"""RLM as a service: an OpenAI-compatible HTTP endpoint (`rlm serve`, `rlm.serve.app`) and an
MCP server over stdio (`rlm mcp`, `rlm.serve.mcp_server`). See docs/serving.md.

Nothing here is imported by `import rlm`; the servers need the `serve` / `mcp` extras.
"""
