"""The control API: Kamailio's dispatcher RPC commands (``dispatcher.list``,
``dispatcher.set_state``, ...) and ours, over a local socket, as kamcmd reaches
Kamailio's.

- `methods`: the commands, as functions over the application's `ControlApi`.
- `jsonrpc`: JSON-RPC 2.0 framing and faults (`RpcError`), without I/O.
- `server`: the control socket's server, in the proxy's gevent hub.
- `client`: what ``gdispatch rpc`` uses: blocking sockets, kamcmd's argument and output
  conventions.
- `paths`: where the socket lives, known to server and client alike.

The package itself imports nothing, so that the client does not pull gevent in.
"""
