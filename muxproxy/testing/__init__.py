"""What tests of code built on muxproxy need, shipped with it: a store kept in
memory, a provider that answers from a function and a clock that moves only when
told to."""

from muxproxy.clock import ManualClock
from muxproxy.testing.memory import MemoryStore
from muxproxy.testing.scripted import ScriptedProvider

__all__ = ["ManualClock", "MemoryStore", "ScriptedProvider"]
