"""The web page and its API: `pixelnet serve --model PATH_OR_URI` (app.py; the command: main.py)."""
