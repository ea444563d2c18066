"""The ChatKit door's domain: the thread store on chatgate's SQL store and the protocol adapter.

Imported only when a ``/chatkit`` request arrives (``api/chatkit.py``): it pulls in ``openai-chatkit`` (and the
``openai-agents`` it imports), which a gateway that never serves ChatKit does not load."""
