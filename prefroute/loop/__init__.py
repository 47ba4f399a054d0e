"""The preference loop: update a fitted router from new battles, swap in a new model, and
gate the result against its parent (paired bootstrap). Serving-side collection lives in
:mod:`prefroute.serve.journal`."""
