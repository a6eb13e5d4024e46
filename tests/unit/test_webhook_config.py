"""WEBHOOK_* settings: the secret is validated at load and masked in `export-worker config`."""

from __future__ import annotations

import base64

import pytest

from shared.config import ConfigError, load_settings, masked
from tests.conftest import ROOT

SECRET = "whsec_" + base64.b64encode(b"a-webhook-secret-of-32-bytes-0001").decode()


def load(**env: str) -> None:
    load_settings(path=ROOT / "config.toml", environ=env)


def test_the_secret_is_masked() -> None:
    settings = load_settings(path=ROOT / "config.toml", environ={"WEBHOOK_SECRET": SECRET})
    assert settings.webhooks.webhook_secret == SECRET
    assert masked(settings)["webhooks"]["webhook_secret"] == "***"


SHORT = "whsec_" + base64.b64encode(b"short").decode()


@pytest.mark.parametrize("bad", ["not-whsec", "whsec_", "whsec_!!!notbase64!!!", SHORT])
def test_a_malformed_secret_stops_the_program_naming_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET must be whsec_"):
        load(WEBHOOK_SECRET=bad)


def test_the_lease_must_outlast_a_delivery() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_LEASE_SECONDS \\(10\\) must be longer than WEBHOOK_TIMEOUT_SECONDS"):
        load(WEBHOOK_LEASE_SECONDS="10", WEBHOOK_TIMEOUT_SECONDS="10")
