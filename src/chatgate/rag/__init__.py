"""RAG: loaders, chunking, embedders, dense and lexical indexes, retrieval and fusion, ingestion jobs."""
