"""How fast an LLM server answers: time to first token and decode tokens/s of a streamed chat
completion, measured from the caller over HTTP (the OpenAI API both backends serve)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from workload.config import bearer

# About the size of an agent's decide step (system prompt, tool list and the request: ~1.5 KB),
# so prefill, which dominates on a slow CPU, costs what it costs the agents.
AGENT_SYSTEM = (
    "You are Agent A, an order-support agent. Pick the one tool that helps most with the request, and its "
    "arguments.\nTools:\n"
    + "\n".join(
        f"- {name}: {what}"
        for name, what in (
            ("get_order", "Look up one order by its id (status, amount, dates, customer)."),
            ("get_shipment", "Look up the shipment of an order: carrier, tracking number, hub, estimated delivery."),
            ("get_customer", "Look up a customer by id: name, tier, contact and their recent orders."),
            ("list_orders", "List a customer's orders with their statuses and amounts, newest first."),
            ("check_parcel", "Ask the carrier for a parcel's current position and delay risk."),
            ("carrier_status", "The carrier's network status: hubs with delays and their causes."),
        )
    )
    + '\nReply as JSON {"tool": ..., "arguments": {...}}. Then answer the customer in one or two sentences, '
    "using only the records for statuses, dates, amounts and carriers; copy them exactly."
)
AGENT_REQUEST = (
    "Hello, I ordered a standing desk last week (order ORD-00042) and the tracking page has not "
    "changed for three days. Where is my parcel now, which carrier has it, and when will it arrive? "
    "Please also tell me whether the delay is on your side or the carrier's."
)


@dataclass(frozen=True)
class Speed:
    ttft_s: float
    """Time to the first content token of a streamed completion (prefill included)."""
    tokens_per_s: float
    """Decode rate after the first token."""
    completion_tokens: int
    prompt_chars: int

    def call_s(self, max_tokens: int) -> float:
        """What one call that generates `max_tokens` takes at this speed."""
        return self.ttft_s + max_tokens / self.tokens_per_s


class SpeedError(RuntimeError):
    """The server did not stream an answer that could be timed; the message says what happened."""


def measure(
    base_url: str,
    model: str,
    max_tokens: int,
    timeout_s: float,
    system: str = AGENT_SYSTEM,
    user: str = AGENT_REQUEST,
    token: str | None = None,
) -> Speed:
    """One streamed completion of up to `max_tokens` tokens, none of it allowed past `timeout_s`;
    `token`: the lab's bearer token, which the server wants."""
    body = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    try:
        with httpx.stream(
            "POST",
            f"{base_url.rstrip('/')}/v1/chat/completions",
            json=body,
            timeout=httpx.Timeout(timeout_s),
            headers=bearer(token),
        ) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if time.perf_counter() - start > timeout_s:
                    raise SpeedError(f"the answer took longer than {timeout_s:g} s")
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    last = time.perf_counter()
                tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    except httpx.TimeoutException as exc:
        raise SpeedError(f"no token within {timeout_s:g} s ({type(exc).__name__})") from exc
    except (httpx.HTTPError, ValueError) as exc:
        raise SpeedError(f"{type(exc).__name__}: {exc}") from exc
    if first is None or last is None or tokens < 2 or last <= first:
        raise SpeedError(f"the server streamed {tokens} token(s), too few to time")
    return Speed(first - start, (tokens - 1) / (last - first), tokens, len(system) + len(user))
