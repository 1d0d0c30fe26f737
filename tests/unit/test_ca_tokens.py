"""Join tokens: Docker's format, every malformed form refused with a reason, the CA digest
checked, rotation refusing the old secret, secrets compared in constant time."""

import hmac

import pytest

from shoal import ca
from shoal.ca import tokens as tk
from shoal.errors import ShoalError

DIGEST = "ab" * 32
# The example from Docker's documentation of `docker swarm join-token`.
DOCKER_EXAMPLE = ("SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-"
                  "1awxwuwd3z9j1z3puu7rcgdbx")


@pytest.fixture
def tokens():
    return ca.JoinTokens.generate(DIGEST)


def test_format_is_dockers(tokens):
    for role in ("worker", "manager"):
        t = tokens.token(role)
        prefix, version, digest, secret = t.split("-")
        assert (prefix, version) == ("SWMTKN", "1")
        assert len(digest) == 50 and len(secret) == 25 and len(t) == 85
        assert int(digest, 36) == int(DIGEST, 16)
        assert digest + secret == (digest + secret).lower()


def test_docker_example_round_trips():
    parsed = ca.JoinToken.parse(DOCKER_EXAMPLE)
    assert str(parsed) == DOCKER_EXAMPLE
    assert len(parsed.ca_digest) == 64


def test_small_digest_is_zero_padded():
    t = ca.JoinToken("00" * 31 + "01", "0" * 24 + "1")
    assert str(t) == "SWMTKN-1-" + "0" * 49 + "1-" + "0" * 24 + "1"
    assert ca.JoinToken.parse(str(t)) == t


def test_round_trip_and_roles(tokens):
    assert tokens.role_for(tokens.token("worker")) == ca.WORKER
    assert tokens.role_for(tokens.token("manager")) == ca.MANAGER
    assert tokens.role_for("  " + tokens.token("swarm-worker") + "\n") == ca.WORKER
    assert tokens.token("worker") != tokens.token("manager")


def test_store_round_trip(tokens):
    data = tokens.to_dict()
    assert set(data) == {"Worker", "Manager"}
    back = ca.JoinTokens.from_dict(data)
    assert back.to_dict() == data
    assert back.role_for(data["Manager"]) == ca.MANAGER


def test_secret_is_not_in_repr(tokens):
    t = tokens.token("worker")
    secret = t.rsplit("-", 1)[1]
    assert secret not in repr(tokens)
    assert secret not in repr(ca.JoinToken.parse(t))
    assert secret not in ca.JoinToken.parse(t).redacted()


GOOD = "SWMTKN-1-" + "a" * 50 + "-" + "b" * 25
MALFORMED = [
    ("", "empty join token"),
    ("   ", "empty join token"),
    ("hello", "must start with 'SWMTKN-'"),
    ("swmtkn-1-" + "a" * 50 + "-" + "b" * 25, "must start with 'SWMTKN-'"),
    ("XSWMTKN-1-" + "a" * 50 + "-" + "b" * 25, "must start with 'SWMTKN-'"),
    ("SWMTKN", "1 parts"),
    ("SWMTKN-1", "2 parts"),
    ("SWMTKN-1-" + "a" * 50, "3 parts"),
    (GOOD + "-extra", "5 parts"),
    ("SWMTKN-2-" + "a" * 50 + "-" + "b" * 25, "FIPS"),
    ("SWMTKN-2-" + "a" * 50 + "-" + "b" * 25 + "-c", "version '2'"),
    ("SWMTKN-0-" + "a" * 50 + "-" + "b" * 25, "unsupported join token version '0'"),
    ("SWMTKN-v1-" + "a" * 50 + "-" + "b" * 25, "unsupported join token version"),
    ("SWMTKN-1-" + "a" * 49 + "-" + "b" * 25, "CA digest part has 49 characters"),
    ("SWMTKN-1-" + "a" * 51 + "-" + "b" * 25, "CA digest part has 51 characters"),
    ("SWMTKN-1--" + "b" * 25, "CA digest part has 0 characters"),
    ("SWMTKN-1-" + "A" * 50 + "-" + "b" * 25, "CA digest part must be lowercase base36"),
    ("SWMTKN-1-" + "a" * 49 + "_-" + "b" * 25, "CA digest part must be lowercase base36"),
    ("SWMTKN-1-" + "z" * 50 + "-" + "b" * 25, "larger than a sha256"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 24, "secret part has 24 characters"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 26, "secret part has 26 characters"),
    ("SWMTKN-1-" + "a" * 50 + "-", "secret part has 0 characters"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 24 + "!", "secret part must be lowercase base36"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 24 + "B", "secret part must be lowercase base36"),
    ("SWMTKN-1-" + "a" * 50 + "-" + "b" * 12 + " " + "b" * 12, "secret part must be"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED)
def test_malformed_tokens_say_why(tokens, text, reason):
    with pytest.raises(ca.MalformedToken) as err:
        ca.JoinToken.parse(text)
    assert reason in str(err.value)
    assert err.value.status == 400
    assert isinstance(err.value, ShoalError)
    with pytest.raises(ca.MalformedToken):
        tokens.role_for(text)


def test_malformed_message_never_echoes_a_secret():
    secret = "s3cr3t" + "x" * 19
    with pytest.raises(ca.MalformedToken) as err:
        ca.JoinToken.parse("SWMTKN-1-" + "A" * 50 + "-" + secret)
    assert secret not in str(err.value)


def test_non_string_token():
    with pytest.raises(ca.MalformedToken):
        ca.JoinToken.parse(None)  # type: ignore[arg-type]


def test_wrong_ca_digest(tokens):
    other = ca.JoinTokens.generate("cd" * 32)
    with pytest.raises(ca.WrongCA) as err:
        tokens.role_for(other.token("manager"))
    assert "another cluster's CA" in str(err.value)
    assert "sha256:cdcdcdcdcdcd" in str(err.value) and "sha256:abababababab" in str(err.value)
    assert err.value.status == 401


def test_wrong_secret(tokens):
    forged = str(ca.JoinToken(DIGEST, tk.new_secret()))
    with pytest.raises(ca.TokenRefused) as err:
        tokens.role_for(forged)
    assert "rotated" in str(err.value)
    assert err.value.status == 401


@pytest.mark.parametrize("role", ["worker", "manager"])
def test_rotation_refuses_the_old_token(tokens, role):
    other_role = "manager" if role == "worker" else "worker"
    old, other = tokens.token(role), tokens.token(other_role)
    new = tokens.rotate(role)
    assert new != old and new == tokens.token(role)
    with pytest.raises(ca.TokenRefused):
        tokens.role_for(old)
    assert tokens.role_for(new) == {"worker": ca.WORKER, "manager": ca.MANAGER}[role]
    assert tokens.token(other_role) == other  # the other role's token is untouched
    assert tokens.role_for(other)


def test_unknown_role(tokens):
    with pytest.raises(ValueError):
        tokens.token("admin")
    with pytest.raises(ValueError):
        tokens.rotate("viewer")


def test_equal_secrets_refused():
    with pytest.raises(ValueError):
        ca.JoinTokens(DIGEST, "a" * 25, "a" * 25)


def test_secrets_compared_in_constant_time_against_both_roles(tokens, monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tk.hmac, "compare_digest", spy)
    tokens.role_for(tokens.token("worker"))
    secret_calls = [c for c in calls if isinstance(c[0], bytes)]
    assert len(secret_calls) == 2  # the manager secret is compared even after a worker match
    calls.clear()
    with pytest.raises(ca.TokenRefused):
        tokens.role_for(str(ca.JoinToken(DIGEST, "0" * 25)))
    assert len([c for c in calls if isinstance(c[0], bytes)]) == 2


def test_secrets_are_random():
    seen = {tk.new_secret() for _ in range(200)}
    assert len(seen) == 200
    assert all(len(s) == 25 for s in seen)
