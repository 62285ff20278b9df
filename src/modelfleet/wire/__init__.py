"""HTTP/1.1 on the wire, as the router and the replica both speak it to their clients.

``server`` is the server side of httptools (request head, limits, parse errors); ``framing``
is how an answer marks its end (Content-Length, chunked, the connection closing) and the
chunked encoding. Each side keeps only what differs: the router routes, authenticates and
proxies (``router.client``), the replica scores (``replica.protocol``); each words its own
refusals. Imports nothing of modelfleet, so both may import it.
"""
