"""``xaibatch serve``: a local web page that explains one image at a time with the run's model and methods.

``core`` (the model, uploads, batches; no web code), ``flags`` (OUT/flagged/<label>/, the images a Flag press
may save), ``sources`` (demo and report images), ``page`` (the HTML of an answer), ``address`` (the host and
port, tried first) and ``app`` (Gradio, the optional extra ``xaibatch[serve]``: the only module that imports it).
"""
