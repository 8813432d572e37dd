"""
The supervisor websocket tunnel: remotedialer's stream multiplexing over one
websocket, which the agent opens and the server uses to reach the node.

C{codec} is the framing, C{session} the sans-IO session and its streams,
C{protocol} the autobahn and TCP adapters that feed them.
"""
