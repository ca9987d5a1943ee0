"""Indexer: metadata readers, folder import, thumbnails, embedders, FAISS bundles and keyword index back ends."""
