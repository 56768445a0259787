"""Fan-out against the peers (Node ws, socket.io, Python websockets): `python -m bench.peers.run`."""
