"""The PUBLISH fast path under its earlier names; the codec is :mod:`edgeagent.transport.codec`.

``pack_properties`` and ``unpack_publish`` are the codec's; ``UnusualPacket`` is
:class:`~edgeagent.transport.codec.MalformedPacket`. Kept so code written against this module
keeps working; new code imports the codec.
"""

from __future__ import annotations

from .codec import MalformedPacket as UnusualPacket
from .codec import pack_properties, unpack_publish

__all__ = ["UnusualPacket", "pack_properties", "unpack_publish"]
