"""Server tools behind one interface (``base.ServerTool``: ``search_documents``, ``current_time``, the deployer's
own) and the tool loop the call step runs (``loop.py``)."""
