"""Ask the device's language model a question and watch the answer stream in.

    python examples/llm_assistant.py "turn off the kitchen lights"
    python examples/llm_assistant.py --model zoo:smollm2 "What is a heat pump?"
    python examples/llm_assistant.py --broker mqtt://127.0.0.1:PORT "…"   # an existing broker

It starts the agent of ``llm_assistant.yaml`` in this process (on a private mosquitto on a free
port unless ``--broker`` is given), calls its ``generate`` skill over MQTT like any other client,
prints the ``partial`` events as they arrive, then the reply's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeagent import DeviceAgent, Fleet, load_config
from edgeagent.localbroker import Mosquitto
from edgeagent.protocol import Event, decode
from edgeagent.transport import Inbound

CONFIG = Path(__file__).with_name("llm_assistant.yaml")


async def ask(
    url: str,
    question: str,
    *,
    model: str | None = None,
    max_tokens: int = 64,
    on_piece: Callable[[str], None] = lambda _piece: None,
) -> dict[str, Any]:
    """Serve ``llm_assistant.yaml``'s agent on ``url``, ask it ``question``, return the reply
    (``on_piece`` gets each partial text as it arrives)."""
    cfg = load_config(CONFIG)
    options = dict(cfg.skills[0].options)
    if model is not None:
        options["model"] = model
    skills = [cfg.skills[0].model_copy(update={"options": options})]
    cfg = cfg.model_copy(
        update={"broker": cfg.broker.model_copy(update={"url": url}), "skills": skills}
    )

    def on_event(msg: Inbound) -> None:
        event = decode(msg.payload)
        if isinstance(event, Event) and event.data.get("trace") == "ask":
            on_piece(str(event.data["text"]))

    async with DeviceAgent(cfg), Fleet(url, fleet=cfg.fleet) as fleet:
        await fleet.transport.subscribe(fleet.topics.all_events("partial"), on_event)
        request = {"messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
        reply: dict[str, Any] = await fleet.call(cfg.device, "generate", request, trace="ask")
        return reply


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("question")
    parser.add_argument("--model", help="zoo:NAME or a genai folder (default: the YAML's)")
    parser.add_argument("--broker", help="an MQTT broker URL (default: a private mosquitto)")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)

    def show(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    with contextlib.ExitStack() as stack:
        url = args.broker or stack.enter_context(Mosquitto()).url
        out = asyncio.run(
            ask(url, args.question, model=args.model, max_tokens=args.max_tokens, on_piece=show)
        )
    print(
        f"\n-- {out['tokens']} tokens ({out['finish_reason']}), first token "
        f"{out['first_token_ms']} ms, {out['tokens_per_s']} tokens/s, {out['events']} events"
    )


if __name__ == "__main__":
    main()
