"""When to renew a certificate: at a random point between 50 % and 80 % of its life.

Random, so that nodes that joined together do not all ask the manager at the same moment
(swarmkit's calculateRandomExpiry); early enough that a manager down for a while (up to 20 %
of the life: 18 days of a 90-day certificate) costs nothing. Life is not_before..not_after.
The clock and the random source are parameters, so tests pin both.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Protocol

from cryptography import x509

from shoal.ca.names import RENEW_FROM, RENEW_TO
from shoal.ca.root import utcnow

_system_random = random.SystemRandom()


class Rng(Protocol):
    def random(self) -> float: ...


def renew_at(cert: x509.Certificate, rng: Rng = _system_random) -> datetime:
    """The moment to renew `cert`: not_before + life * uniform[0.5, 0.8)."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    fraction = RENEW_FROM + (RENEW_TO - RENEW_FROM) * rng.random()
    return start + (end - start) * fraction


def renew_delay(cert: x509.Certificate, now: datetime | None = None,
                rng: Rng = _system_random) -> float:
    """Seconds from `now` until `cert` should be renewed; 0 when that moment has passed
    (including when the certificate has expired: the caller then finds renewal refused
    and must rejoin)."""
    delta: timedelta = renew_at(cert, rng) - (now or utcnow())
    return max(0.0, delta.total_seconds())


def retry_delay(cert: x509.Certificate, attempt: int, now: datetime | None = None) -> float:
    """After a failed renewal: back off 1 s, 2 s, 4 s ... up to 5 % of the life (at most an
    hour), so that a renewal keeps being tried well before expiry without hammering."""
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    cap = min(3600.0, max(1.0, life * 0.05))
    left = (cert.not_valid_after_utc - (now or utcnow())).total_seconds()
    delay = min(float(2 ** min(attempt, 20)), cap)
    if left > 0:  # try at least twice more before it expires
        delay = min(delay, max(0.1, left / 2))
    return delay
