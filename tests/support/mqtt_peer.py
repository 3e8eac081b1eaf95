"""A test's own MQTT client beside the device under test."""

from __future__ import annotations

import asyncio
from typing import Any

from edged.testing import stop_task


class MqttPeer:
    """A test's own MQTT client beside the device (a recorder, a stand-in for an AWS
    service): subscribed to ``topics`` once entered, handing every message to
    :meth:`handle` until left."""

    def __init__(self, host: str, port: int, topics: list[str], identifier: str) -> None:
        self.host, self.port, self.topics, self.identifier = host, port, topics, identifier
        self.client: Any = None  # the aiomqtt.Client while entered: publish with it
        self._task: asyncio.Task | None = None

    async def handle(self, client: Any, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._serve(subscribed),
                                         name=f"test[{self.identifier}]")
        await asyncio.wait_for(subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await stop_task(self._task)

    async def _serve(self, subscribed: asyncio.Event) -> None:
        import aiomqtt

        async with aiomqtt.Client(self.host, self.port, identifier=self.identifier) as client:
            await client.subscribe([(topic, 1) for topic in self.topics])
            self.client = client
            subscribed.set()
            async for message in client.messages:
                await self.handle(client, str(message.topic), bytes(message.payload))
