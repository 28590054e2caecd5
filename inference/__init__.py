"""The inference layer: how a puzzle is run to an answer, shared by the server and by evaluation.

Halting (`halting`), view transforms and voting (`views`) and the rule check of answers (`verify`) live here, and
nothing else decides them: the server's scheduler and request handling call these functions, and so do
`training.evaluate` and `training.calibrate`, so a model card's figures are what the server does.
"""
