"""The ModelMux seed's model and price table (seed 000), routed to the demo provider."""

from __future__ import annotations

from typing import Any

ASPECT_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9"]
GPT_IMAGE_2_CREDITS = {
    "1k": {"standard": 2, "medium": 10, "high": 18},
    "2k": {"standard": 5, "medium": 20, "high": 40},
    "4k": {"standard": 10, "medium": 32, "high": 80},
}


def seed_models(provider: str = "demo") -> dict[str, Any]:
    def route(model: str) -> list[dict[str, str]]:
        return [{"provider": provider, "model": model}]

    return {
        "nano-banana": {"routes": route("nano-banana"), "credits": 5, "resolutions": ["1k"],
                        "aspect_ratios": ASPECT_RATIOS},
        "nano-banana-2": {"routes": route("nano-banana-2"), "credits": 5,
                          "resolutions": ["1k", "2k", "4k"], "aspect_ratios": ASPECT_RATIOS},
        "nano-banana-pro": {"routes": route("nano-banana-pro"), "credits": 10,
                            "resolutions": ["1k", "2k", "4k"], "aspect_ratios": ASPECT_RATIOS},
        "gpt-image-2": {"routes": route("gpt-image-2"), "credits": GPT_IMAGE_2_CREDITS,
                        "resolutions": ["1k", "2k", "4k"], "aspect_ratios": ASPECT_RATIOS},
    }
