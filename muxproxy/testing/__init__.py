"""What tests of code built on muxproxy need, shipped with it: a provider that
answers from a function and a clock that moves only when told to."""

from muxproxy.clock import ManualClock
from muxproxy.testing.scripted import ScriptedProvider

__all__ = ["ManualClock", "ScriptedProvider"]
