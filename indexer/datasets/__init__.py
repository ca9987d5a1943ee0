"""`promptdex import-dataset`: public datasets (DiffusionDB, webdataset, img2dataset, Hugging Face) into the corpus."""
