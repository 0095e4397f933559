"""What tests of code built on muxproxy need, shipped with it: a store kept in
memory and a clock that moves only when told to."""

from muxproxy.clock import ManualClock
from muxproxy.testing.memory import MemoryStore

__all__ = ["ManualClock", "MemoryStore"]
