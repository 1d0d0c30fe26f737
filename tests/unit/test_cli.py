"""The shoal CLI's parsing of Docker's flag forms."""

import pytest

from shoal.cli.main import _network_attachment, _publish
from shoal.errors import InvalidArgument


@pytest.mark.parametrize("value, port", [
    ("8080:80", {"TargetPort": 80, "PublishedPort": 8080, "Protocol": "tcp",
                 "PublishMode": "ingress"}),
    ("80", {"TargetPort": 80, "PublishedPort": 0, "Protocol": "tcp", "PublishMode": "ingress"}),
    ("53:53/udp", {"TargetPort": 53, "PublishedPort": 53, "Protocol": "udp",
                   "PublishMode": "ingress"}),
    ("mode=host,published=8080,target=80", {"TargetPort": 80, "PublishedPort": 8080,
                                            "Protocol": "tcp", "PublishMode": "host"}),
])
def test_publish_forms(value, port):
    assert _publish(value) == port


@pytest.mark.parametrize("value", ["x:80", "mode=host,published=1", "target=80,colour=red"])
def test_bad_publish_is_refused(value):
    with pytest.raises(InvalidArgument, match="invalid --publish"):
        _publish(value)


def test_network_long_form():
    assert _network_attachment("name=appnet,alias=db,alias=db2") == {
        "Target": "appnet", "Aliases": ["db", "db2"]}
    assert _network_attachment("appnet") == {"Target": "appnet"}
    with pytest.raises(InvalidArgument):
        _network_attachment("alias=db")
