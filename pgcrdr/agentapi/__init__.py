"""The network contract between the control plane and a region agent: the API's messages
(``models``), the HTTP client (``client``, with its fault hook ``faults``) and the pure helpers
that read what travels (``lsn``, ``sessions``). Both sides import it; it imports neither."""
