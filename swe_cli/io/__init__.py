"""Reading and writing files on disk: safetensors headers and rows, checkpoint folders, atomic
writes. Nothing here knows about workspaces, methods or the command line."""
