"""The console's pure parts: redaction of a job's request, the limits form as the
key rules take it, and chart geometry."""

from __future__ import annotations

import pytest

from muxproxy.console.charts import columns, rows
from muxproxy.console.jobs import redacted
from muxproxy.console.keys import limit_fields
from muxproxy.console.pages import Form
from muxproxy.errors import InvalidRequest
from muxproxy.keyadmin import apply_limits
from muxproxy.store import KeyLimits


def test_every_image_in_a_request_is_redacted() -> None:
    request = {"prompt": "a fox", "n": 1,
               "images": [{"url": "https://example.com/private.png"},
                          {"blob": "inputs/20261201/j-image0.png", "content_type": "image/png"}],
               "mask": {"blob": "inputs/20261201/j-mask.png"},
               "extra": {"image": "data:image/png;base64,iVBORw0KGgo=", "long": "A" * 5000}}
    shown = redacted(request)
    text = repr(shown)
    for secret in ("example.com", "inputs/", "iVBORw0KGgo", "AAAA"):
        assert secret not in text
    assert shown["prompt"] == "a fox" and shown["n"] == 1
    assert shown["images"] == ["[image by URL, redacted]", "[image/png uploaded, redacted]"]
    assert shown["extra"]["long"] == "[5000 characters redacted]"


def test_the_limits_form_speaks_the_key_rules() -> None:
    form = Form({"unlimited": "yes", "rpm": "60", "max_concurrent": "",
                 "models": "demo-image, other  third", "webhook_allow_networks": ""})
    assert limit_fields(form, leave_empty_out=True) == {
        "unlimited": True, "rpm": 60, "models": ["demo-image", "other", "third"]}
    changes = limit_fields(form, leave_empty_out=False)
    assert changes["max_concurrent"] is None and changes["webhook_allow_networks"] is None
    limits = apply_limits(KeyLimits(max_concurrent=3), changes)
    assert limits == KeyLimits(unlimited=True, rpm_limit=60,
                               allowed_models=("demo-image", "other", "third"))
    # A box left unticked clears the flag; text where a number belongs meets the rule.
    assert limit_fields(Form({}), leave_empty_out=True)["unlimited"] is False
    with pytest.raises(InvalidRequest, match="rpm"):
        apply_limits(KeyLimits(), limit_fields(Form({"rpm": "ten"}), leave_empty_out=True))


def test_charts_scale_to_the_highest_value() -> None:
    chart = columns("Jobs", [("a", 0), ("b", 5), ("c", 10)], width=300, height=100)
    assert [round(b.height) for b in chart.bars] == [0, 50, 100]
    assert [round(b.y) for b in chart.bars] == [100, 50, 0]
    assert chart.top == 10 and not chart.empty
    assert columns("Nothing", [("a", 0)]).empty
    bars = rows("Models", [("m1", 4), ("m2", 2)], width=600, label_width=200)
    assert bars.bars[0].width == 2 * bars.bars[1].width and bars.height == 48
