"""The renewal schedule: a random point in 50-80 % of the life, from an injected clock and rng."""

import random
from datetime import UTC, datetime, timedelta

import pytest

from shoal import ca

NOW = datetime(2030, 1, 1, tzinfo=UTC)


class FixedRng:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


@pytest.fixture(scope="module")
def cert():
    auth = ca.Authority.create("c1", allow_short=True)
    auth.set_lifetime(timedelta(days=90))
    return auth.issue_node_credentials("n1", "worker", now=NOW).cert


def life(cert):
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def test_bounds(cert):
    start = cert.not_valid_before_utc
    assert ca.renew_at(cert, FixedRng(0.0)) == start + life(cert) * 0.5
    assert ca.renew_at(cert, FixedRng(0.999999)) < start + life(cert) * 0.8
    assert ca.renew_at(cert, FixedRng(0.5)) == start + life(cert) * 0.65


def test_random_points_stay_in_bounds(cert):
    rng = random.Random(7)
    start, span = cert.not_valid_before_utc, life(cert)
    points = [ca.renew_at(cert, rng) for _ in range(2000)]
    assert all(start + span * 0.5 <= p < start + span * 0.8 for p in points)
    # spread over the window, not bunched (what keeps nodes from renewing all at once)
    fractions = sorted((p - start) / span for p in points)
    assert fractions[0] < 0.51 and fractions[-1] > 0.79
    assert 0.63 < fractions[len(fractions) // 2] < 0.67


def test_system_random_by_default(cert):
    start, span = cert.not_valid_before_utc, life(cert)
    assert start + span * 0.5 <= ca.renew_at(cert) < start + span * 0.8


def test_delay_from_an_injected_clock(cert):
    at = ca.renew_at(cert, FixedRng(0.25))
    assert ca.renew_delay(cert, now=at - timedelta(hours=3), rng=FixedRng(0.25)) == 3 * 3600
    assert ca.renew_delay(cert, now=at + timedelta(seconds=1), rng=FixedRng(0.25)) == 0.0
    assert ca.renew_delay(cert, now=NOW + timedelta(days=400), rng=FixedRng(0.25)) == 0.0


def test_short_test_certificate(cert):
    auth = ca.Authority.create("c1", allow_short=True, node_lifetime=timedelta(seconds=10))
    short = auth.issue_node_credentials("n1", "worker", now=NOW).cert
    d = ca.renew_delay(short, now=NOW, rng=random.Random(1))
    assert 5.0 <= d < 8.0


def test_retry_delay(cert):
    issued = cert.not_valid_before_utc
    delays = [ca.retry_delay(cert, n, now=issued + timedelta(days=60)) for n in range(15)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == 3600.0  # capped
    near_end = cert.not_valid_after_utc - timedelta(seconds=10)
    assert ca.retry_delay(cert, 12, now=near_end) == 5.0  # still tries before expiry
    assert ca.retry_delay(cert, 3, now=cert.not_valid_after_utc + timedelta(days=1)) == 8.0
