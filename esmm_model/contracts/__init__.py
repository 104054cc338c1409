"""Contracts between the steps, the serving side and the outside: artifact layouts, the model store and its version
listing, the blessing file, the warmup file and the serving signature's Predict request.

Contracts build on the model (``esmm_model``) and nothing above it; the model never imports them.
"""
