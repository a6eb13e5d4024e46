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


def test_a_target_share_above_the_worker_total_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"WEBHOOK_MAX_IN_FLIGHT_PER_TARGET \(9\) must not be more than "
                                          r"WEBHOOK_MAX_IN_FLIGHT \(8\)"):
        load(WEBHOOK_MAX_IN_FLIGHT="8", WEBHOOK_MAX_IN_FLIGHT_PER_TARGET="9")


def test_the_in_flight_limits_are_settings() -> None:
    settings = load_settings(path=ROOT / "config.toml", environ={
        "WEBHOOK_MAX_IN_FLIGHT": "10", "WEBHOOK_MAX_IN_FLIGHT_PER_TARGET": "2", "MAIL_MAX_IN_FLIGHT": "7"})
    assert (settings.webhooks.webhook_max_in_flight, settings.webhooks.webhook_max_in_flight_per_target) == (10, 2)
    assert settings.mail.mail_max_in_flight == 7
