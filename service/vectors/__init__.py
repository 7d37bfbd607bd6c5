"""The vector store: collections of items (SQLite) with their FAISS indexes."""
