"""shoal: a set of Linux hosts made into one cluster network, spoken to with the docker CLI.

Imports point one way: model <- store <- manager <- api. The agent talks to the manager only
over the network; dataplane and dns take a NodeView and know nothing of the store or the API.
"""

__version__ = "0.1.0"
