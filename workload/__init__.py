"""The code that runs on the lab's nodes: agents, MCP tool servers, the baseline chain,
the LLM backend glue and the telemetry every hop writes. See README.md beside this file."""
